"""Read a package's Python source from a wheel or a directory without importing it: what the API
extraction tools (extract_sglang_api.py, extract_vllm_api.py) parse."""

from __future__ import annotations

import os
import zipfile
from typing import List, Optional


class PackageSource:
    """The files of `package` in `src`: a .whl, or a directory holding the package (or the
    package directory itself)."""

    def __init__(self, src: str, package: str) -> None:
        self.src = src
        self.package = package
        self.zip: Optional[zipfile.ZipFile] = None
        self.root = ""
        if os.path.isfile(src) and src.endswith(".whl"):
            self.zip = zipfile.ZipFile(src)
            return
        root = src if os.path.isdir(os.path.join(src, package)) else os.path.dirname(src.rstrip("/"))
        if not os.path.isdir(os.path.join(root, package)):
            raise SystemExit(f"{src}: neither a .whl nor a directory containing the {package} package")
        self.root = root

    def python_files(self) -> List[str]:
        """The package's .py files as paths inside the source ("sglang/srt/..."), sorted."""
        if self.zip is not None:
            names = [n for n in self.zip.namelist() if n.startswith(self.package + "/") and n.endswith(".py")]
        else:
            names = [
                os.path.relpath(os.path.join(d, f), self.root).replace(os.sep, "/")
                for d, _, files in os.walk(os.path.join(self.root, self.package))
                for f in files
                if f.endswith(".py")
            ]
        return sorted(names)

    def read(self, name: str) -> Optional[str]:
        """The text of the file `name` (a path inside the source), None when it is absent."""
        try:
            if self.zip is not None:
                return self.zip.read(name).decode("utf-8")
            with open(os.path.join(self.root, name), encoding="utf-8") as f:
                return f.read()
        except (KeyError, FileNotFoundError):
            return None

    def read_module(self, module: str) -> Optional[str]:
        """The text of the dotted `module` (its .py file or its package's __init__.py)."""
        path = module.replace(".", "/")
        for name in (path + ".py", path + "/__init__.py"):
            text = self.read(name)
            if text is not None:
                return text
        return None
