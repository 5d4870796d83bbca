"""The vectorised MoECombine kernel variants, named as in kernels/moe_combine/moe_combine_kernel.cu
(its kMoeVariantNames table), so the emulated and GPU tests run every one of them. The list is
read from the source because it is needed at collection time, before any library is loaded."""
import re
from pathlib import Path

KERNEL_SOURCE = (Path(__file__).resolve().parents[2] / "kernels" / "moe_combine"
                 / "moe_combine_kernel.cu")


def _variant_names():
    table = re.search(r"kMoeVariantNames\[kNumVariants\] = \{([^}]*)\}", KERNEL_SOURCE.read_text())
    assert table, f"no kMoeVariantNames table in {KERNEL_SOURCE}"
    return tuple(re.findall(r'"(\w+)"', table.group(1)))


VARIANTS = _variant_names()
