"""Writes the fuzz targets' seed inputs into tests/fuzz_corpus/<target>/ (tools/fuzz.sh fuzzes from
them; tests/test_fuzz.py replays them, and every regression input kept next to them, in CI).

    PYTHONPATH=python:converter python tests/fuzz_corpus/make_seeds.py

gguf and model: small valid models (a MoLE with a q8_0 LUT, a dense one) and a few valid GGUFs
that are not mole models; tokenizer: text (the shared corpus' first lines, Unicode edge cases,
invalid UTF-8); detokenizer: token-id byte strings. Files are named by content so rerunning changes
nothing that is already there.
"""
import hashlib
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO / "python"), str(REPO / "converter")]


def put(target: str, data: bytes, tag: str) -> None:
    d = HERE / target
    d.mkdir(exist_ok=True)
    (d / f"seed-{tag}-{hashlib.sha1(data).hexdigest()[:10]}").write_bytes(data)


def models() -> None:
    import gguf

    from mole_convert.convert import convert
    from mole_convert.testing import make_random_checkpoint, tiny_config
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name, lut, cfg in (("mole-q8", "q8_0", tiny_config(vocab_size=288, hidden_size=32, intermediate_size=64,
                                                                num_attention_heads=2, num_key_value_heads=1)),
                               ("dense", "q8_0", tiny_config(vocab_size=288, hidden_size=32, intermediate_size=64,
                                                             num_attention_heads=2, num_key_value_heads=2,
                                                             num_experts=0))):
            ckpt = make_random_checkpoint(tmp / name, cfg, seed=1, form="dense" if cfg.num_experts == 0 else "training",
                                          tokenizer="tiny")
            out = tmp / f"{name}.gguf"
            convert(ckpt, out, lut_type=lut, weight_type="q8_0", progress=False)
            for target in ("gguf", "model"):
                put(target, out.read_bytes(), name)
        w = gguf.GGUFWriter(tmp / "other.gguf", "llama")   # a valid GGUF of another architecture
        w.add_uint32("llama.block_count", 1)
        w.add_array("some.strings", ["a", "bc", ""])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        put("gguf", (tmp / "other.gguf").read_bytes(), "other-arch")


def texts() -> None:
    corpus = REPO.parent / "shared" / "data" / "corpus"
    lines = []
    for f in sorted(corpus.glob("*.txt"))[:3] if corpus.is_dir() else []:
        lines += f.read_text(errors="replace").splitlines()[200:204]
    samples = [ln.encode() for ln in lines if ln.strip()] + [
        "It is a truth universally acknowledged".encode(), "naïve café — ﬁ ﬂ".encode(), "𝄞 emoji 🙂👍🏽".encode(),
        "<|endoftext|>Hello<|endoftext|>".encode(), "   \t\n\r\n  spaces ".encode(), "日本語のテキスト".encode(),
        b"\xff\xfe invalid \xc3\x28 \xe2\x82 \xf0\x9f\x98", b"", b"a" * 300]
    for i, s in enumerate(samples):
        put("tokenizer", s, f"text{i}")
    for i, s in enumerate([bytes(range(256)), b"\x00\x01" * 40, bytes([0xff, 0x0f] * 30), b"\x10\x00\x20\x00"]):
        put("detokenizer", s, f"ids{i}")


if __name__ == "__main__":
    models()
    texts()
    for d in sorted(HERE.iterdir()):
        if d.is_dir():
            print(d.name, len(list(d.iterdir())), "inputs", sum(f.stat().st_size for f in d.iterdir()), "bytes")
