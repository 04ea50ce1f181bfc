// The translation unit that carries clhost_torch_pch (cmake/ClhostTorchPch.cmake).
