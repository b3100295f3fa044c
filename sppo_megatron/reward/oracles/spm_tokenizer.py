"""DeBERTa-v2 tokenizers (PairRM's) with the normaliser of their sentencepiece model.

transformers 5 rebuilds a DeBERTa-v2 tokenizer's normaliser as NFC plus whitespace rules and
drops the sentencepiece model's precompiled charsmap (nmt_nfkc), even when tokenizer.json holds
it. Non-breaking and ideographic spaces, zero-width characters, full-width forms, ligatures,
"…", ™ ½ ² and control characters then become other tokens than the ones PairRM was trained
and run on (transformers 4's DebertaV2TokenizerFast). `load_spm_tokenizer` puts the original
back: tokenizer.json's own normaliser and pre-tokenizer when it has the charsmap (the file as
it is), else transformers 4's conversion of spm.model (convert_slow_tokenizer.DebertaV2Converter:
[Lowercase,] Strip, Precompiled(charsmap), Replace(" {2,}", " "); Metaspace, "▁" prepended to
every piece).
"""

from __future__ import annotations

import importlib
import json
from typing import Any, List, Optional

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from transformers import AutoTokenizer
from transformers.utils import cached_file

from sppo_megatron.errors import ConfigError, first_line

#: the packages a tokenizer given as a sentencepiece model needs (import name, pip name)
SPM_PACKAGES = (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf"))


def missing_spm_packages() -> List[str]:
    """pip names of the sentencepiece packages that do not import here."""
    missing = []
    for module, package in SPM_PACKAGES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def _locate(source: str, filename: str) -> Optional[str]:
    """`filename` of a tokenizer directory or hub id (as AutoTokenizer finds it), or None."""
    return cached_file(
        source,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def _json_backend(tokenizer_json: Optional[str]) -> Any:
    """The `tokenizers.Tokenizer` of tokenizer.json when its normaliser has the sentencepiece
    charsmap (a Precompiled step), else None."""
    if tokenizer_json is None:
        return None
    with open(tokenizer_json, encoding="utf-8") as fh:
        normalizer = json.load(fh).get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    if not any(step.get("type") == "Precompiled" for step in steps):
        return None
    return Tokenizer.from_file(tokenizer_json)


def _spm_charsmap(spm_model: str) -> bytes:
    """The precompiled charsmap of a sentencepiece model file."""
    missing = missing_spm_packages()
    if missing:
        raise ConfigError(
            f"reward.model_path: its tokenizer {spm_model} is a sentencepiece model, which needs the "
            f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''} (pip install {' '.join(missing)})"
        )
    from sentencepiece import sentencepiece_model_pb2  # here: its absence is reported above, in one line

    proto = sentencepiece_model_pb2.ModelProto()
    with open(spm_model, "rb") as fh:
        proto.ParseFromString(fh.read())
    return proto.normalizer_spec.precompiled_charsmap


def load_spm_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    """The DeBERTa-v2 tokenizer of `source` (a directory or hub id) with its sentencepiece
    normaliser (errors name reward.model_path). A tokenizer with no charsmap to restore
    (neither spm.model nor a tokenizer.json holding it, e.g. one saved by transformers 5) is a
    ConfigError: PairRM would read text normalised unlike its training data."""
    original = _json_backend(_locate(source, "tokenizer.json"))
    spm_model = None if original is not None else _locate(source, "spm.model")
    if original is None and spm_model is None:
        raise ConfigError(
            f"reward.model_path: the tokenizer of {source} has neither spm.model nor a tokenizer.json holding the "
            "sentencepiece charsmap (a tokenizer saved by transformers 5 lost it); give PairRM its original "
            "tokenizer files"
        )
    charsmap = None if spm_model is None else _spm_charsmap(spm_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"reward.model_path: cannot load the tokenizer of {source}: {first_line(e)}") from None
    backend = tokenizer.backend_tokenizer
    if original is not None:
        backend.normalizer, backend.pre_tokenizer = original.normalizer, original.pre_tokenizer
        return tokenizer
    steps = [normalizers.Lowercase()] if getattr(tokenizer, "do_lower_case", False) else []
    steps += [normalizers.Strip()] + ([normalizers.Precompiled(charsmap)] if charsmap else [])
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(Regex(" {2,}"), " ")])
    pieces = [pre_tokenizers.Punctuation(behavior="isolated")] if getattr(tokenizer, "split_by_punct", False) else []
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        pieces + [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    return tokenizer
