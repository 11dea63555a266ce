"""What a new user reaches first: the public imports, ``attn_implementation="livecc"`` after a bare
``import livecc``, ``livecc.patch`` and the README's Python section."""

import re
import subprocess
import sys
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_kernels_and_their_references_are_public():
    import importlib

    import livecc
    from livecc.kernels import (  # noqa: F401
        paged_decode_attention,
        paged_decode_attention_reference,
        preprocess_frames,
        preprocess_frames_reference,
        text_only_linear_cross_entropy,
        text_only_linear_cross_entropy_reference,
        varlen_attention,
        varlen_attention_reference,
    )

    for name in ("livecc", "livecc.kernels", "livecc.qwen_vl", "livecc.models", "livecc.data", "livecc.data.pipeline",
                 "livecc.infer", "livecc.train", "livecc.eval", "livecc.bench"):
        package = importlib.import_module(name)
        assert package.__all__ and all(hasattr(package, item) for item in package.__all__), name
    assert (Path(livecc.__file__).parent / "py.typed").is_file()


def test_from_pretrained_with_attn_implementation_livecc_after_a_bare_import(tmp_path):
    from livecc.models import tiny_qwen_vl

    tiny_qwen_vl().save_pretrained(tmp_path / "model")
    script = (
        "import torch, livecc\n"
        "from transformers import AutoModelForImageTextToText\n"
        f"m = AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'model')!r}, attn_implementation='livecc')\n"
        "assert m.config._attn_implementation == 'livecc', m.config._attn_implementation\n"
        "ids = torch.randint(0, 1000, (2, 9))\n"
        "print(torch.isfinite(m(input_ids=ids).logits).all().item())\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "True"


def test_patch_gives_the_text_only_loss_without_full_logits(gen):
    import livecc
    from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl

    model = livecc.patch(tiny_qwen_vl(seed=0))
    reference = tiny_qwen_vl(seed=0, attn_implementation="sdpa")
    ids = torch.randint(0, 5000, (1, 30), generator=gen)
    labels = torch.where(torch.rand(1, 30, generator=gen) < 0.3, ids, -100)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None and not calls  # the LM head ran on labelled rows only, inside the loss
    torch.testing.assert_close(out.loss, reference(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, text_only_causal_lm_loss(model, input_ids=ids, labels=labels))
    assert model(input_ids=ids).logits.shape == (1, 30, model.config.text_config.vocab_size)  # no labels: as before


def test_the_readme_python_section_runs(capsys):
    code = re.search(r"## In Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(code, str(README), "exec"), {})
    assert capsys.readouterr().out.count("ms)") == 2
