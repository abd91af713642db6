"""Network architectures used by t7synth.

Every network here is a plain ``torch.nn.Module`` with no Lightning imports, so it
can be built, counted, exported or reused outside the training framework; the
Lightning modules in ``t7synth.models`` wrap them. This file deliberately imports
nothing: import the submodule you need (for example ``t7synth.nets.unet``) so that
loading one network never pulls in the others or their dependencies.
"""
