"""The lab's images: loading skips what a dockerd already has from this recipe, builds nothing
without debootstrap's tar (and says which command makes it), and the recipe hash names it."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from shoal.lab import images
from shoal.lab.errors import LabError


class FakeDockerd:
    """The docker CLI's image and container verbs `images.load` uses, over an in-memory store
    of tags -> labels; every other verb is a test failure."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, str]] = {}
        self.containers: dict[str, str] = {}  # name -> image
        self.imports = 0

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        rc, out = self._run(list(args))
        if check and rc != 0:
            raise LabError(f"docker {' '.join(args)} failed")
        return subprocess.CompletedProcess(["docker", *args], rc, out, "")

    def _run(self, args: list[str]) -> tuple[int, str]:
        match args:
            case ["image", "inspect", "--format", _, tag]:
                labels = self.images.get(tag)
                return (0, labels.get(images.LABEL, "") + "\n") if labels is not None else (1, "")
            case ["image", "inspect", tag]:
                return (0, "[]") if tag in self.images else (1, "")
            case ["import", _, tag]:
                self.imports += 1
                self.images[tag] = {}
                return 0, ""
            case ["create", "--name", name, "--network", "none", image, "true"]:
                assert image in self.images
                self.containers[name] = image
                return 0, ""
            case ["cp", source, target]:
                assert Path(source.removesuffix("/.")).is_dir()
                assert target.split(":")[0] in self.containers
                return 0, ""
            case ["commit", *changes, holder, tag]:
                assert holder in self.containers
                labels = [c.split(" ", 1)[1] for c in changes[1::2] if c.startswith("LABEL ")]
                self.images[tag] = dict(label.split("=", 1) for label in labels)
                return 0, ""
            case ["rm", "-f", name]:
                return (0, "") if self.containers.pop(name, None) else (1, "")
        raise AssertionError(f"unexpected docker {args}")


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Both roots "built" (empty tars) in a cache of the test's own."""
    monkeypatch.setattr(images, "CACHE", tmp_path / "cache")
    for rootfs in images.ROOTS:
        out = rootfs.cache_dir()
        out.mkdir(parents=True)
        (out / "rootfs.tar").write_bytes(b"")
        (out / "manifest.json").write_text("{}")
    return tmp_path / "cache"


def test_a_load_makes_every_image_once_and_a_second_load_does_nothing(
    built: Path, tmp_path: Path
) -> None:
    dockerd = FakeDockerd()
    images.load(dockerd, tmp_path)
    assert {tag: labels[images.LABEL] for tag, labels in dockerd.images.items() if labels} == {
        image.tag: images.images_hash(image.rootfs) for image in images.IMAGES
    }
    assert {r.base_tag() for r in images.ROOTS} <= set(dockerd.images)
    assert not dockerd.containers
    images.load(dockerd, tmp_path)
    assert dockerd.imports == len(images.ROOTS) == 2


def test_an_image_from_an_older_recipe_is_made_again_without_a_new_import(
    built: Path, tmp_path: Path
) -> None:
    dockerd = FakeDockerd()
    images.load(dockerd, tmp_path)
    dockerd.images["shoal-lab/app:1"] = {images.LABEL: "an-older-recipe"}
    images.load(dockerd, tmp_path)
    assert dockerd.images["shoal-lab/app:1"][images.LABEL] == images.images_hash()
    assert dockerd.imports == 2


def test_loading_before_building_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "CACHE", tmp_path / "empty")
    with pytest.raises(LabError, match="make lab-images"):
        images.load(FakeDockerd(), tmp_path)


def test_the_recipe_hash_follows_the_package_list() -> None:
    more = dataclasses.replace(images.EXAMPLES, packages=(*images.EXAMPLES.packages, "curl"))
    assert more.recipe_hash() != images.EXAMPLES.recipe_hash()


def test_the_sidecar_root_follows_shoals_dependencies_and_its_images_shoals_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new dependency rebuilds the sidecar's root; a change to shoal's code only makes its
    image again (the code goes in at load time)."""
    root, image = images.SIDECAR.recipe_hash(), images.images_hash(images.SIDECAR)
    files = images._files(images.SIDECAR)
    assert "opt/shoal/app/shoal/cli/main.py" in files
    assert not any("__pycache__" in path for path in files)
    edited = {**files, "opt/shoal/app/shoal/cli/main.py": (b"# edited", 0o644)}
    monkeypatch.setattr(images, "_files", lambda rootfs: edited)
    assert images.SIDECAR.recipe_hash() == root
    assert images.images_hash(images.SIDECAR) != image
    requires = (*images.shoal_requirements(), "rich>=13")
    monkeypatch.setattr(images, "shoal_requirements", lambda: requires)
    assert images.SIDECAR.recipe_hash() != root


def test_loading_only_the_sidecar_imports_only_its_root(built: Path, tmp_path: Path) -> None:
    dockerd = FakeDockerd()
    images.load(dockerd, tmp_path, {images.SIDECAR_IMAGE})
    assert dockerd.imports == 1 and images.SIDECAR.base_tag() in dockerd.images
    assert dockerd.images[images.SIDECAR_IMAGE][images.LABEL] == images.images_hash(images.SIDECAR)
    assert "shoal-lab/redis:7" not in dockerd.images


def test_an_unknown_image_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"no lab image shoal-lab/nginx:1 \(the lab's images: "):
        images.load(FakeDockerd(), tmp_path, {"shoal-lab/nginx:1"})
