/* Test plug-in: a shared library that is not a clhost plug-in (no entry symbol). */
__attribute__((visibility("default"))) int not_a_plugin(void) {
  return 42;
}
