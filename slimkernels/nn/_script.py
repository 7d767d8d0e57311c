"""TorchScript's refusal of the library's layers, by name."""


class NotScriptable:
    """``nn.Module`` mixin: ``torch.jit.script`` of the module, or of a model holding it, raises
    a RuntimeError that names it (TorchScript failed inside its own type resolution, with an
    AssertionError about an annotation, saying nothing of why). The layers dispatch at run time
    to compiled kernels TorchScript cannot compile; ``torch.compile`` takes them."""

    def __prepare_scriptable__(self):   # (called by torch.jit.script on every module first)
        raise RuntimeError(f"torch.jit.script cannot compile {type(self).__name__}: slimkernels' "
                           f"layers run compiled kernels that TorchScript cannot see; run the "
                           f"model eagerly or with torch.compile")
