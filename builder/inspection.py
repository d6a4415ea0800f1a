"""Read a model without downloading its weights where that can be avoided: the hub's
model info (file list and sizes, safetensors or GGUF summary, licence, gated), its small
JSON files (config, tokenizer config), or the headers of local GGUF / safetensors files."""

import contextlib
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,100}$")


@dataclass
class ModelFacts:
    format: str = ""  # safetensors | gguf
    architecture: str = ""
    model_type: str = ""
    num_layers: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    context_length: int = 0
    dtype: str = ""
    parameters: int = 0
    parameter_dtypes: dict = field(default_factory=dict)
    total_bytes: int = 0
    has_tokenizer: bool = False
    has_chat_template: bool = False
    license: str = ""
    gated: bool = False
    revision: str = ""
    files: list = field(default_factory=list)  # [name, size]

    def as_dict(self) -> dict:
        return asdict(self)


def _from_config(facts: ModelFacts, config: dict) -> None:
    text = config.get("text_config") or config
    archs = config.get("architectures") or []
    facts.architecture = archs[0] if archs else ""
    facts.model_type = config.get("model_type", "")
    facts.num_layers = int(text.get("num_hidden_layers", 0) or 0)
    facts.hidden_size = int(text.get("hidden_size", 0) or 0)
    facts.num_heads = int(text.get("num_attention_heads", 0) or 0)
    facts.num_kv_heads = int(text.get("num_key_value_heads", facts.num_heads) or 0)
    head_dim = text.get("head_dim") or (
        facts.hidden_size // facts.num_heads if facts.num_heads else 0
    )
    facts.head_dim = int(head_dim or 0)
    facts.context_length = int(text.get("max_position_embeddings", 0) or 0)
    facts.dtype = str(config.get("torch_dtype") or text.get("torch_dtype") or "")


# --- Hugging Face hub ---------------------------------------------------------------


def _hub_errors():
    import httpx2
    from huggingface_hub import errors

    return errors, httpx2


def inspect_hub(*, repo_id: str, revision: str = "", token: str = "") -> ModelFacts:
    from huggingface_hub import HfApi, hf_hub_download

    if not REPO_ID_RE.match(repo_id or "") or ".." in repo_id or "--" in repo_id:
        raise ValidationError({"repo_id": "Use owner/name, e.g. Qwen/Qwen2.5-7B-Instruct."})
    revision = revision or "main"
    if not REVISION_RE.match(revision) or ".." in revision:
        raise ValidationError({"revision": "Use a branch, tag or commit hash."})
    errors, httpx2 = _hub_errors()
    api = HfApi(endpoint=settings.HF_ENDPOINT or None)
    token = token or None
    try:
        info = api.model_info(
            repo_id, revision=revision, token=token, files_metadata=True, timeout=15
        )
    except errors.GatedRepoError as exc:
        raise ValidationError(
            {
                "token": (
                    f"{repo_id} is gated: give a hub token of an account that accepted its terms."
                    if not token
                    else f"This token has no access to the gated repo {repo_id}."
                )
            }
        ) from exc
    except errors.RevisionNotFoundError as exc:
        raise ValidationError({"revision": f"{repo_id} has no revision {revision!r}."}) from exc
    except errors.RepositoryNotFoundError as exc:
        field = "token" if token else "repo_id"
        raise ValidationError(
            {
                field: (
                    f"No repo {repo_id} (or it is private and this token cannot see it)."
                    if token
                    else f"No repo {repo_id} on the hub (private repos need a token)."
                )
            }
        ) from exc
    except errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status == 401:
            raise ValidationError({"token": "The hub refused this token."}) from exc
        raise ValidationError({"repo_id": f"The hub answered {status}: try again later."}) from exc
    except (httpx2.HTTPError, OSError) as exc:
        raise ValidationError({"repo_id": f"The hub cannot be reached: {exc}"}) from exc

    facts = ModelFacts(revision=info.sha or revision)
    facts.files = [[s.rfilename, s.size or 0] for s in (info.siblings or [])]
    names = {f[0] for f in facts.files}
    card = info.card_data.to_dict() if info.card_data else {}
    facts.license = str(
        card.get("license")
        or next((t.split(":", 1)[1] for t in (info.tags or []) if t.startswith("license:")), "")
    )
    facts.gated = bool(info.gated)
    facts.has_tokenizer = bool(names & {"tokenizer.json", "tokenizer.model"})
    ggufs = [f for f in facts.files if f[0].endswith(".gguf")]
    if info.safetensors:
        facts.format = "safetensors"
        facts.parameters = int(info.safetensors.total or 0)
        facts.parameter_dtypes = dict(info.safetensors.parameters or {})
        facts.total_bytes = sum(size for name, size in facts.files if name.endswith(".safetensors"))
    elif any(name.endswith(".safetensors") for name in names):
        # No summary in the model info: read the safetensors headers (ranged requests).
        try:
            meta = api.get_safetensors_metadata(repo_id, revision=facts.revision, token=token)
        except (
            errors.HfHubHTTPError,
            errors.NotASafetensorsRepoError,
            httpx2.HTTPError,
            OSError,
            ValueError,
        ) as exc:
            raise ValidationError(
                {"repo_id": f"Cannot read the safetensors headers: {exc}"}
            ) from exc
        facts.format = "safetensors"
        facts.parameter_dtypes = dict(meta.parameter_count)
        facts.parameters = sum(meta.parameter_count.values())
        facts.total_bytes = sum(size for name, size in facts.files if name.endswith(".safetensors"))
    elif ggufs:
        facts.format = "gguf"
        facts.total_bytes = max(size for _, size in ggufs)
        gguf = info.gguf or {}
        facts.parameters = int(gguf.get("total", 0) or 0)
        facts.context_length = int(gguf.get("context_length", 0) or 0)
        facts.model_type = gguf.get("architecture", "")
        facts.architecture = f"gguf:{facts.model_type}" if facts.model_type else "gguf"
        facts.has_chat_template = bool(gguf.get("chat_template"))
        facts.has_tokenizer = True  # GGUF files carry their tokenizer
    for small in ("config.json", "tokenizer_config.json"):
        if small not in names:
            continue
        try:
            path = hf_hub_download(
                repo_id,
                small,
                revision=facts.revision,
                token=token,
                endpoint=settings.HF_ENDPOINT or None,
                cache_dir=str(Path(settings.VAR_DIR) / "hub-cache"),
            )
            data = json.loads(Path(path).read_text())
        except (errors.HfHubHTTPError, httpx2.HTTPError, OSError, ValueError):
            continue
        if small == "config.json":
            arch = facts.architecture
            _from_config(facts, data)
            if facts.format == "gguf" and arch:
                facts.architecture = arch
        else:
            facts.has_chat_template = facts.has_chat_template or bool(data.get("chat_template"))
    if not facts.format:
        raise ValidationError(
            {
                "repo_id": (
                    f"{repo_id} has neither safetensors nor GGUF weights; Gantry serves those two."
                )
            }
        )
    return facts


# --- Local files --------------------------------------------------------------------


def inspect_gguf(path: Path) -> ModelFacts:
    from gguf import GGUFReader

    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValidationError({"upload": f"{path.name} is not a GGUF model file."})
    try:
        reader = GGUFReader(str(path))
    except (ValueError, struct.error, IndexError) as exc:
        raise ValidationError({"upload": f"{path.name} is not a readable GGUF file."}) from exc

    def value(key, default=None):
        fld = reader.fields.get(key)
        if fld is None:
            return default
        part = fld.parts[fld.data[0]]
        if fld.types and fld.types[0].name == "STRING":
            return bytes(part).decode("utf-8", "replace")
        return part.tolist()[0] if hasattr(part, "tolist") else part

    arch = value("general.architecture", "")
    facts = ModelFacts(format="gguf", model_type=arch, architecture=f"gguf:{arch}")
    facts.num_layers = int(value(f"{arch}.block_count", 0) or 0)
    facts.hidden_size = int(value(f"{arch}.embedding_length", 0) or 0)
    facts.num_heads = int(value(f"{arch}.attention.head_count", 0) or 0)
    facts.num_kv_heads = int(value(f"{arch}.attention.head_count_kv", facts.num_heads) or 0)
    facts.head_dim = facts.hidden_size // facts.num_heads if facts.num_heads else 0
    facts.context_length = int(value(f"{arch}.context_length", 0) or 0)
    facts.parameters = int(sum(int(t.n_elements) for t in reader.tensors))
    facts.total_bytes = path.stat().st_size
    facts.has_tokenizer = "tokenizer.ggml.tokens" in reader.fields
    facts.has_chat_template = "tokenizer.chat_template" in reader.fields
    facts.files = [[path.name, facts.total_bytes]]
    return facts


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValidationError({"upload": f"{path.name} is not a safetensors file."})
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise ValidationError({"upload": f"{path.name} is not a safetensors file."})
        try:
            return json.loads(f.read(size))
        except ValueError as exc:
            raise ValidationError({"upload": f"{path.name} is not a safetensors file."}) from exc


def inspect_folder(path: Path) -> ModelFacts:
    path = Path(path)
    config = path / "config.json"
    shards = sorted(path.glob("*.safetensors"))
    if not config.is_file() or not shards:
        raise ValidationError(
            {"upload": ("A model folder needs config.json and at least one .safetensors file.")}
        )
    facts = ModelFacts(format="safetensors")
    try:
        _from_config(facts, json.loads(config.read_text()))
    except ValueError as exc:
        raise ValidationError({"upload": "config.json is not valid JSON."}) from exc
    dtypes: dict[str, int] = {}
    for shard in shards:
        for name, tensor in _safetensors_header(shard).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= int(dim)
            dtypes[tensor.get("dtype", "?")] = dtypes.get(tensor.get("dtype", "?"), 0) + count
    facts.parameter_dtypes = dtypes
    facts.parameters = sum(dtypes.values())
    facts.total_bytes = sum(s.stat().st_size for s in shards)
    facts.has_tokenizer = (path / "tokenizer.json").is_file() or (
        path / "tokenizer.model"
    ).is_file()
    tok_config = path / "tokenizer_config.json"
    if tok_config.is_file():
        with contextlib.suppress(ValueError):
            facts.has_chat_template = bool(json.loads(tok_config.read_text()).get("chat_template"))
    facts.files = [[p.name, p.stat().st_size] for p in sorted(path.iterdir()) if p.is_file()]
    return facts
