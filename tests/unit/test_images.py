from __future__ import annotations

import shutil

from components.services.images import IMAGES, ROOT, image_tag


def _copy(tmp_path):
    ctx = tmp_path / "ctx"
    shutil.copytree(ROOT / "serving", ctx, ignore=shutil.ignore_patterns("__pycache__"))
    return ctx


def test_tag_stable_for_unchanged_context(tmp_path):
    ctx = _copy(tmp_path)
    assert image_tag(ctx, "base:1") == image_tag(ctx, "base:1")


def test_tag_changes_with_one_byte(tmp_path):
    ctx = _copy(tmp_path)
    before = image_tag(ctx, "base:1")
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_bytes(dockerfile.read_bytes() + b" ")
    assert image_tag(ctx, "base:1") != before


def test_tag_changes_with_base_image(tmp_path):
    ctx = _copy(tmp_path)
    assert image_tag(ctx, "base:1") != image_tag(ctx, "base:2")


def test_tag_changes_when_a_file_is_added_or_renamed(tmp_path):
    ctx = _copy(tmp_path)
    before = image_tag(ctx, "b:1")
    (ctx / "new.txt").write_text("x")
    added = image_tag(ctx, "b:1")
    (ctx / "new.txt").rename(ctx / "other.txt")
    assert len({before, added, image_tag(ctx, "b:1")}) == 3


def test_dockerignored_files_do_not_change_the_tag(tmp_path):
    ctx = _copy(tmp_path)
    (ctx / ".dockerignore").write_text("scratch/\n*.log\n")
    before = image_tag(ctx, "b:1")
    (ctx / "scratch").mkdir()
    (ctx / "scratch" / "junk.bin").write_bytes(b"\0" * 10)
    (ctx / "run.log").write_text("noise")
    assert image_tag(ctx, "b:1") == before


def test_base_images_pinned():
    for name, (_ctx, base) in IMAGES.items():
        assert ":" in base and not base.endswith(":latest"), name


def test_tag_changes_with_a_mode_bit_only(tmp_path):
    """docker-build's context hash includes file modes (a COPY keeps them): a chmod alone rebuilds the
    image, so it must get a new tag, or the push into the IMMUTABLE repository is refused."""
    ctx = _copy(tmp_path)
    before = image_tag(ctx, "base:1")
    dockerfile = ctx / "Dockerfile"
    dockerfile.chmod(dockerfile.stat().st_mode ^ 0o100)
    assert image_tag(ctx, "base:1") != before
