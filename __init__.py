"""uverify: is the unlearned model still robust?

Train M, unlearn a deletion request to get M', export both to ONNX and check the L_p-ball property
certified (CROWN through auto_LiRPA) and empirical (PGD). The top-level import stays light (no torch)
so that `uverify --help` answers at once; the heavy parts load when a command needs them.
"""

from uverify.errors import UverifyError

__version__ = "0.1.0"

__all__ = ["UverifyError", "__version__"]
