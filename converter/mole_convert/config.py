"""MoleConfig: the hyper-parameters of a MoLE (or dense, num_experts == 0) model, read from and
written to the authors' HF config.json (a LlamaConfig plus `num_experts`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import CheckpointError

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class MoleConfig:
    vocab_size: int                 # V (may be padded past the tokenizer's size)
    hidden_size: int                # d
    intermediate_size: int          # D, shared FFN width
    num_hidden_layers: int          # L
    num_attention_heads: int
    num_key_value_heads: int
    num_experts: int                # N; 0 = dense
    expert_intermediate_size: int | None = None   # None -> intermediate_size (authors' experts = MoleMLP(config))
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None               # {"type": "linear", "factor": f}
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # unknown config.json keys, kept on save

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_ff_expert(self) -> int:
        return self.expert_intermediate_size if self.expert_intermediate_size is not None else self.intermediate_size

    @property
    def rope_scale(self) -> float:
        """Linear RoPE scaling factor (1.0 when rope_scaling is None)."""
        return float(self.rope_scaling["factor"]) if self.rope_scaling else 1.0

    def validate(self) -> None:
        def bad(name, why):
            raise CheckpointError(f"config field '{name}': {why} (got {getattr(self, name)!r})")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        if not isinstance(self.num_experts, int) or isinstance(self.num_experts, bool) or self.num_experts < 0:
            bad("num_experts", "must be a non-negative integer")
        if self.expert_intermediate_size is not None and (
                not isinstance(self.expert_intermediate_size, int) or self.expert_intermediate_size < 1):
            bad("expert_intermediate_size", "must be a positive integer or null")
        if self.hidden_size % self.num_attention_heads:
            bad("num_attention_heads", f"must divide hidden_size {self.hidden_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"must divide num_attention_heads {self.num_attention_heads}")
        if self.head_dim % 2:
            bad("num_attention_heads", f"head_dim {self.head_dim} must be even for RoPE")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            bad("rms_norm_eps", "must be a positive number")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            bad("rope_theta", "must be a positive number")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            kind = rs.get("type", rs.get("rope_type")) if isinstance(rs, dict) else None
            if kind != "linear":
                bad("rope_scaling", "only {'type': 'linear', 'factor': f} is supported")
            factor = rs.get("factor")
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
                bad("rope_scaling", "'factor' must be a positive number")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < self.vocab_size):
                bad(name, f"must be null or an id in [0, {self.vocab_size})")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "MoleConfig":
        """Read a LlamaConfig-shaped dict (+ num_experts). hidden_act is ignored: GELU(erf) is fixed."""
        if not isinstance(d, dict):
            raise CheckpointError(f"config must be a JSON object, got {type(d).__name__}")
        for name in _REQUIRED:
            if name not in d or d[name] is None:
                raise CheckpointError(f"config.json is missing required field '{name}'")

        def token_id(name, default):
            v = d.get(name, default)
            if isinstance(v, list):          # some configs list several eos ids; the first is the one we use
                v = v[0] if v else None
            return v

        known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "num_experts", "expert_intermediate_size", "max_position_embeddings",
                 "rms_norm_eps", "rope_theta", "rope_scaling", "bos_token_id", "eos_token_id", "pad_token_id"}
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            num_experts=d.get("num_experts") or 0,
            expert_intermediate_size=d.get("expert_intermediate_size"),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=d.get("rope_theta", 10000.0),
            rope_scaling=d.get("rope_scaling"),
            bos_token_id=token_id("bos_token_id", 0), eos_token_id=token_id("eos_token_id", 0),
            pad_token_id=token_id("pad_token_id", None),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_hf_dict(self) -> dict:
        """A LlamaConfig-shaped dict (+ num_experts) as the authors' checkpoints carry."""
        d = {k: v for k, v in self.extra.items()}
        d.update({
            "architectures": ["MoleForCausalLM"],
            "model_type": "llama",
            "hidden_act": "gelu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
            "use_cache": True,
        })
        fields = asdict(self)
        fields.pop("extra")
        if fields["expert_intermediate_size"] is None:
            fields.pop("expert_intermediate_size")
        d.update(fields)
        return d
