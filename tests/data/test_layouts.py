from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import PurePosixPath

import pytest
from dpmedbench.core.errors import LayoutError
from dpmedbench.data.archive import Archive, is_debris
from dpmedbench.data.layouts import chest_patient_id, read_aptos, read_chest_xray

from ..conftest import extract, rewrite_zip
from ..support.zips import patch_zip_member


@pytest.mark.parametrize(
    ("member", "debris"),
    [
        ("chest_xray/__MACOSX/chest_xray/train/NORMAL/._IM-0001-0001.jpeg", True),
        ("__MACOSX/chest_xray/test/NORMAL/x.jpeg", True),
        ("chest_xray/train/PNEUMONIA/._person1_virus_6.jpeg", True),
        ("chest_xray/.DS_Store", True),
        ("chest_xray/train/NORMAL/IM-0001-0001.jpeg", False),
        ("train_images/000c1434d8d7.png", False),
    ],
)
def test_macos_debris_is_recognised(member, debris):
    assert is_debris(member) is debris


def test_patient_ids_follow_kermany_file_names():
    assert chest_patient_id("chest_xray/train/PNEUMONIA/person1003_virus_1685.jpeg") == "person1003"
    assert chest_patient_id("person1_bacteria_1.jpeg") == chest_patient_id("person1_bacteria_2.jpeg")
    assert chest_patient_id("IM-0117-0001.jpeg") == "IM-0117"
    assert chest_patient_id("NORMAL2-IM-0117-0001.jpeg") == "NORMAL2-IM-0117" != chest_patient_id("IM-0117-0001.jpeg")
    assert chest_patient_id("odd-name.jpeg") == "odd-name"


def test_kaggle_chest_archive_is_read_once_without_debris(chest_kaggle_zip):
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        names = zf.namelist()
    real = [n for n in names if n.endswith(".jpeg") and "__MACOSX" not in n and "/._" not in n]
    nested = [n for n in real if n.startswith("chest_xray/chest_xray/")]
    assert nested and len(nested) * 2 == len(real), "fixture must hold the nested duplicate tree"
    assert any("__MACOSX" in n for n in names) and any(n.endswith(".DS_Store") for n in names)

    with Archive(chest_kaggle_zip) as arc:
        inv = read_chest_xray(arc)
    sources = [r.source for r in inv.records]
    assert len(sources) == len(set(sources)) == len(nested)
    assert all(s.startswith("chest_xray/") and not s.startswith("chest_xray/chest_xray/") for s in sources)
    assert not any("__MACOSX" in s or "/._" in s for s in sources)
    assert Counter(r.origin for r in inv.records).keys() == {"train", "val", "test"}
    assert Counter(r.origin for r in inv.records)["val"] == 4  # 2 per class
    assert any("duplicate tree 'chest_xray/chest_xray/'" in n for n in inv.notes)
    assert inv.classes == ("NORMAL", "PNEUMONIA")
    pneumonia = [r for r in inv.records if "person" in r.source]
    assert pneumonia and all(r.label == 1 for r in pneumonia)


def test_extracted_folder_reads_like_the_zip(chest_kaggle_zip, tmp_path):
    with Archive(chest_kaggle_zip) as z, Archive(extract(chest_kaggle_zip, tmp_path)) as d:
        assert read_chest_xray(z).records == read_chest_xray(d).records
        member = read_chest_xray(z).records[0].source
        assert z.read(member) == d.read(member)


def test_mendeley_chest_archive_has_no_val(chest_mendeley_zip):
    with Archive(chest_mendeley_zip) as arc:
        inv = read_chest_xray(arc)
    assert {r.origin for r in inv.records} == {"train", "test"}
    assert all(r.source.startswith("chest_xray/") for r in inv.records)


def test_chest_archive_with_an_empty_class_is_refused(chest_kaggle_zip, tmp_path):
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        drop = {n: None for n in zf.namelist() if "/test/NORMAL/" in n}
    bad = rewrite_zip(chest_kaggle_zip, tmp_path / "bad.zip", drop)
    with Archive(bad) as arc, pytest.raises(LayoutError, match=r"bad.zip:chest_xray/test/NORMAL/: class NORMAL"):
        read_chest_xray(arc)


def test_unknown_layout_names_the_archive(tmp_path):
    path = tmp_path / "pictures.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("holiday/beach.jpeg", b"x")
    with Archive(path) as arc, pytest.raises(LayoutError, match=r"pictures.zip: unknown layout .*\['holiday'\]"):
        read_chest_xray(arc)
    with Archive(path) as arc, pytest.raises(LayoutError, match=r"pictures.zip: unknown layout for APTOS"):
        read_aptos(arc)


def test_not_a_zip_and_missing_path_are_named(tmp_path):
    junk = tmp_path / "archive.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(LayoutError, match="archive.zip: not a zip archive"):
        Archive(junk)
    with pytest.raises(LayoutError, match="nowhere.zip: no such file"):
        Archive(tmp_path / "nowhere.zip")


def test_aptos_archive(aptos_zip):
    with Archive(aptos_zip) as arc:
        inv = read_aptos(arc)
    assert len(inv.records) == 50
    assert Counter(r.label for r in inv.records) == {g: 10 for g in range(5)}
    assert all(r.source.startswith("train_images/") and r.source.endswith(".png") for r in inv.records)
    assert all(r.group == r.source.removeprefix("train_images/").removesuffix(".png") for r in inv.records)
    assert any("ignored 3 unlabelled images in test_images/" in n for n in inv.notes)


def test_aptos_archive_inside_a_folder(aptos_zip, tmp_path):
    root = extract(aptos_zip, tmp_path / "aptos2019-blindness-detection")
    with Archive(tmp_path) as arc:
        inv = read_aptos(arc)
    assert len(inv.records) == 50 and root.exists()
    assert all(r.source.startswith("aptos2019-blindness-detection/train_images/") for r in inv.records)


def test_aptos_csv_row_without_image_is_named(aptos_zip, tmp_path):
    with zipfile.ZipFile(aptos_zip) as zf:
        first_id = zf.read("train.csv").decode().splitlines()[1].split(",")[0]
    bad = rewrite_zip(aptos_zip, tmp_path / "bad.zip", {f"train_images/{first_id}.png": None})
    with (
        Archive(bad) as arc,
        pytest.raises(
            LayoutError,
            match=rf"bad.zip:train.csv line 2: id_code '{first_id}' has no image train_images/{first_id}.png",
        ),
    ):
        read_aptos(arc)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("id_code,grade\nabc,1\n", "expected the columns id_code,diagnosis"),
        ("id_code,diagnosis\n{id},7\n", "line 2: diagnosis '7'"),
        ("id_code,diagnosis\n{id},0\n{id},0\n", "line 3: id_code '{id}' appears twice"),
        ("id_code,diagnosis\n{id},0\n", "grade 1 has no images"),
        ("id_code,diagnosis\n", r"train.csv: the file has a header but no rows"),
    ],
)
def test_aptos_bad_csv(aptos_zip, tmp_path, csv_text, message):
    with zipfile.ZipFile(aptos_zip) as zf:
        first_id = zf.read("train.csv").decode().splitlines()[1].split(",")[0]
    bad = rewrite_zip(aptos_zip, tmp_path / "bad.zip", {"train.csv": csv_text.format(id=first_id).encode()})
    with Archive(bad) as arc, pytest.raises(LayoutError, match=message.format(id=first_id)):
        read_aptos(arc)


def add_members(src, dest, extra):
    """Copy the zip ``src`` to ``dest`` with the members ``extra`` (name -> bytes) added, duplicates included."""
    import warnings

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": on purpose
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        for name, data in extra.items():
            zout.writestr(name, data)
    return dest


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"chest_xray/train/NORMAL/IM-0999-0001.bmp": b"BM", "chest_xray/test/PNEUMONIA/scan.tif": b"II*"}, 2),
        ({"chest_xray/train/COVID/covid-1.jpeg": b"x", "chest_xray/test/COVID/covid-2.jpeg": b"x"}, 2),
        ({"chest_xray/val/loose.jpeg": b"x"}, 1),
    ],
)
@pytest.mark.parametrize("as_folder", [False, True])
def test_chest_files_outside_the_class_folders_are_refused(chest_kaggle_zip, tmp_path, extra, named, as_folder):
    bad = add_members(chest_kaggle_zip, tmp_path / "extra.zip", extra)
    path = extract(bad, tmp_path / "extracted") if as_folder else bad
    with Archive(path) as arc, pytest.raises(LayoutError, match=rf"{named} files? (is|are) not .*delete") as err:
        read_chest_xray(arc)
    for member in extra:
        assert member in str(err.value)


def test_chest_unexpected_files_in_the_skipped_duplicate_tree_stay_ignored(chest_kaggle_zip, tmp_path):
    extra = {"chest_xray/chest_xray/train/COVID/covid-1.jpeg": b"x", "chest_xray/__MACOSX/x/._y.bmp": b"x"}
    with Archive(add_members(chest_kaggle_zip, tmp_path / "extra.zip", extra)) as arc:
        inv = read_chest_xray(arc)
    assert not any("COVID" in r.source for r in inv.records)


def test_duplicate_zip_members_are_refused(chest_kaggle_zip, tmp_path):
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        twice = sorted(n for n in zf.namelist() if n.startswith("chest_xray/train/NORMAL/I"))[:2]
        extra = {n: zf.read(n) for n in twice}
    bad = add_members(chest_kaggle_zip, tmp_path / "dup.zip", extra)
    with pytest.raises(LayoutError, match=r"dup.zip: 2 member names appear more than once") as err, Archive(bad) as arc:
        read_chest_xray(arc)
    assert all(n in str(err.value) for n in twice)


def test_encrypted_or_deflate64_members_are_named(aptos_zip, tmp_path):
    with zipfile.ZipFile(aptos_zip) as zf:
        member = sorted(n for n in zf.namelist() if n.startswith("train_images/"))[3]
    locked = patch_zip_member(aptos_zip, tmp_path / "locked.zip", member, flag_bits=0x1)
    with Archive(locked) as arc, pytest.raises(LayoutError, match=rf"locked.zip: 1 member is encrypted .*{member}"):
        arc.check_readable(arc.members)
    d64 = patch_zip_member(aptos_zip, tmp_path / "d64.zip", "train.csv", compress_type=9)
    with Archive(d64) as arc, pytest.raises(LayoutError, match=r"d64.zip: 1 member is compressed with deflate64"):
        read_aptos(arc)


def test_aptos_two_images_with_one_id_are_refused(aptos_zip, tmp_path):
    with zipfile.ZipFile(aptos_zip) as zf:
        first_id = zf.read("train.csv").decode().splitlines()[1].split(",")[0]
    bad = add_members(aptos_zip, tmp_path / "two.zip", {f"train_images/{first_id}.jpg": b"x"})
    with Archive(bad) as arc, pytest.raises(LayoutError, match=rf"two.zip:train_images/: id_code {first_id} has 2"):
        read_aptos(arc)


# ------------------------------------------------------------------ one canonical name, links, special files


def _some(zip_path, prefix, n=1):
    with zipfile.ZipFile(zip_path) as zf:
        return sorted(m for m in zf.namelist() if m.startswith(prefix) and m.endswith(".jpeg") and not is_debris(m))[:n]


@pytest.mark.parametrize(
    "alias",
    [
        lambda m: m.replace("chest_xray/", "chest_xray/./", 1),
        lambda m: m.replace("chest_xray/", "chest_xray//", 1),
        lambda m: "/" + m,
        lambda m: m.replace("/", "\\"),
        lambda m: m.replace("chest_xray/train/", "chest_xray/test/../train/", 1),
    ],
    ids=["dot", "double-slash", "leading-slash", "backslash", "dot-dot"],
)
def test_one_image_under_two_spellings_is_refused(chest_kaggle_zip, tmp_path, alias):
    (member,) = _some(chest_kaggle_zip, "chest_xray/train/NORMAL/")
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        data = zf.read(member)
    bad = add_members(chest_kaggle_zip, tmp_path / "alias.zip", {alias(member): data})
    with pytest.raises(LayoutError, match=r"alias.zip: 1 member name appears more than once") as err:
        Archive(bad)
    assert member in str(err.value)


def test_member_names_are_canonical_everywhere(chest_kaggle_zip, tmp_path):
    """A zip written with leading slashes and backslashes reads like the plain one, and its stray is still found."""
    renamed = tmp_path / "odd.zip"
    with zipfile.ZipFile(chest_kaggle_zip) as zin, zipfile.ZipFile(renamed, "w") as zout:
        for info in zin.infolist():
            if not info.is_dir():
                zout.writestr("/" + info.filename.replace("/", "\\", 1), zin.read(info.filename))
    with Archive(chest_kaggle_zip) as plain, Archive(renamed) as odd:
        assert read_chest_xray(odd).records == read_chest_xray(plain).records
        member = read_chest_xray(odd).records[0].source
        assert odd.read(member) == plain.read(member)
        assert odd.describe(member).endswith(":/" + member.replace("/", "\\", 1))
    stray = add_members(renamed, tmp_path / "stray.zip", {"/chest_xray/train/COVID/covid-1.jpeg": b"x"})
    with Archive(stray) as arc, pytest.raises(LayoutError, match=r"1 file is not .*chest_xray/train/COVID/covid-1"):
        read_chest_xray(arc)


def test_a_name_that_climbs_out_of_the_archive_is_refused(chest_kaggle_zip, tmp_path):
    bad = add_members(chest_kaggle_zip, tmp_path / "climb.zip", {"chest_xray/../../etc/x.jpeg": b"x"})
    with pytest.raises(LayoutError, match=r"climb.zip: member 'chest_xray/../../etc/x.jpeg' points outside"):
        Archive(bad)


@pytest.mark.parametrize("as_folder", [False, True])
def test_names_that_differ_only_in_case_are_refused(chest_kaggle_zip, tmp_path, as_folder):
    (member,) = _some(chest_kaggle_zip, "chest_xray/train/NORMAL/")
    other = member.replace("/NORMAL/", "/normal/")
    bad = add_members(chest_kaggle_zip, tmp_path / "case.zip", {other: b"x"})
    path = extract(bad, tmp_path / "extracted") if as_folder else bad
    with pytest.raises(LayoutError, match=r"1 pair of names differs only in letter case") as err:
        Archive(path)
    assert member in str(err.value) and other in str(err.value)


def without_nested_tree(src, dest):
    """The Kaggle fixture without its nested copy ``chest_xray/chest_xray/``, so one tree can be changed alone."""
    with zipfile.ZipFile(src) as zf:
        nested = {n: None for n in zf.namelist() if n.startswith("chest_xray/chest_xray/")}
    return rewrite_zip(src, dest, nested)


def test_one_patient_in_two_letter_cases_is_one_group(chest_kaggle_zip, tmp_path):
    single = without_nested_tree(chest_kaggle_zip, tmp_path / "single.zip")
    first, second = _some(single, "chest_xray/train/PNEUMONIA/person", 2)
    assert chest_patient_id(first) != chest_patient_id(second)
    upper = second.rsplit("/", 1)[0] + "/" + PurePosixPath(first).stem.upper() + "_2.jpeg"
    with zipfile.ZipFile(single) as zf:
        data = zf.read(second)
    changed = add_members(rewrite_zip(single, tmp_path / "a.zip", {second: None}), tmp_path / "b.zip", {upper: data})
    with Archive(changed) as arc:
        inv = read_chest_xray(arc)
    groups = {r.source: r.group for r in inv.records}
    assert groups[upper] == groups[first] and groups[first].casefold() == chest_patient_id(first)
    assert len({g.casefold() for g in groups.values()}) == len(set(groups.values()))
    assert any("spelt in more than one letter case" in n for n in inv.notes)


def test_linked_folders_are_followed_and_read_once(chest_kaggle_zip, tmp_path):
    single = without_nested_tree(chest_kaggle_zip, tmp_path / "single.zip")
    plain = extract(single, tmp_path / "plain")
    with Archive(plain) as arc:
        expected = read_chest_xray(arc).records
    (tmp_path / "link").symlink_to(plain, target_is_directory=True)
    with Archive(tmp_path / "link") as arc:
        assert read_chest_xray(arc).records == expected
    # A link to a folder inside the tree gives its files a second name: which name is meant is refused, not guessed.
    (plain / "chest_xray" / "val").rename(plain / "val-real")
    (plain / "chest_xray" / "val").symlink_to("../val-real", target_is_directory=True)
    with pytest.raises(LayoutError, match=r"4 files have two names .*chest_xray/val/NORMAL/.* and val-real/NORMAL/"):
        Archive(plain)


@pytest.mark.parametrize("kind", ["outside", "dangling", "beside", "cycle", "fifo"])
def test_links_out_of_the_folder_and_special_files_are_refused(chest_kaggle_zip, tmp_path, kind):
    import os

    root = extract(without_nested_tree(chest_kaggle_zip, tmp_path / "single.zip"), tmp_path / "folder")
    normal = root / "chest_xray" / "train" / "NORMAL"
    target = sorted(normal.iterdir())[0]
    place = normal / "IM-9999-0001.jpeg"
    if kind == "outside":
        (tmp_path / "elsewhere.jpeg").write_bytes(target.read_bytes())
        place.symlink_to(tmp_path / "elsewhere.jpeg")
        message = r"IM-9999-0001.jpeg: a symbolic link that points outside the folder"
    elif kind == "dangling":
        place.symlink_to(tmp_path / "gone.jpeg")
        message = r"IM-9999-0001.jpeg: a symbolic link that points nowhere"
    elif kind == "beside":
        place.symlink_to(target.name)
        message = r"1 file has two names .*IM-9999-0001.jpeg"
    elif kind == "cycle":
        (normal / "loop").symlink_to("..", target_is_directory=True)
        message = r"loop: a symbolic link to a folder that contains it"
    else:
        os.mkfifo(place)
        message = r"IM-9999-0001.jpeg: a special file \(FIFO"
    with pytest.raises(LayoutError, match=message):
        Archive(root)


def test_a_zip_holding_a_symbolic_link_is_refused(chest_kaggle_zip, tmp_path):
    import stat

    bad = tmp_path / "link.zip"
    add_members(chest_kaggle_zip, bad, {})
    with zipfile.ZipFile(bad, "a") as zf:
        info = zipfile.ZipInfo("chest_xray/train/NORMAL/IM-9999-0001.jpeg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(LayoutError, match=r"link.zip: 1 member is a symbolic link .*IM-9999-0001.jpeg"):
        Archive(bad)


def test_a_second_tree_of_other_images_is_an_ambiguity(chest_kaggle_zip, tmp_path):
    with zipfile.ZipFile(chest_kaggle_zip) as zf:
        nested = sorted(n for n in zf.namelist() if n.startswith("chest_xray/chest_xray/") and n.endswith(".jpeg"))
        other = {n: zf.read(n) + b"\0" for n in nested[:1]}  # one image of the copy differs by one byte
    bad = rewrite_zip(chest_kaggle_zip, tmp_path / "more.zip", other)
    with Archive(bad) as arc, pytest.raises(LayoutError, match=r"two chest X-ray trees with different images") as err:
        read_chest_xray(arc)
    assert "'chest_xray/'" in str(err.value) and "'chest_xray/chest_xray/'" in str(err.value)
    assert nested[0].removeprefix("chest_xray/chest_xray/") in str(err.value)
    with Archive(chest_kaggle_zip) as arc:
        assert any("identical by SHA-256" in n for n in read_chest_xray(arc).notes)


def test_a_member_larger_than_the_limit_is_refused_before_it_is_read(chest_kaggle_zip, tmp_path, monkeypatch):
    import tracemalloc

    from dpmedbench.data import archive

    (member,) = _some(chest_kaggle_zip, "chest_xray/train/NORMAL/")
    bomb = tmp_path / "bomb.zip"
    add_members(chest_kaggle_zip, bomb, {})
    with (
        zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("chest_xray/train/NORMAL/IM-9999-0001.jpeg", "w", force_zip64=True) as fh,
    ):
        for _ in range(archive.MAX_MEMBER_BYTES >> 20):
            fh.write(bytes(1 << 20))
        fh.write(b"\0")
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    with Archive(bomb) as arc, pytest.raises(LayoutError, match=r"IM-9999-0001.jpeg: 67,108,865 bytes, larger than"):
        arc.read("chest_xray/train/NORMAL/IM-9999-0001.jpeg")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes allocated to refuse a bomb"
    # A directory that understates the size is caught by the bounded read.
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1000)
    with Archive(chest_kaggle_zip) as arc:
        monkeypatch.setattr(arc, "size", lambda m: 10)
        with pytest.raises(LayoutError, match=r"more than the 0 MiB a member may be, though its declared size"):
            arc.read(member)


def test_aptos_csv_with_an_endless_field_is_named(aptos_zip, tmp_path):
    bad = rewrite_zip(
        aptos_zip, tmp_path / "bad.zip", {"train.csv": b'id_code,diagnosis\n"' + b"a" * 200_000 + b'",0\n'}
    )
    with Archive(bad) as arc, pytest.raises(LayoutError, match=r"bad.zip:train.csv line \d+: not a readable CSV row"):
        read_aptos(arc)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".bmp"])
def test_aptos_refuses_formats_the_chest_side_refuses(aptos_zip, tmp_path, suffix):
    with zipfile.ZipFile(aptos_zip) as zf:
        first_id = zf.read("train.csv").decode().splitlines()[1].split(",")[0]
        data = zf.read(f"train_images/{first_id}.png")
    bad = add_members(
        rewrite_zip(aptos_zip, tmp_path / "a.zip", {f"train_images/{first_id}.png": None}),
        tmp_path / "b.zip",
        {f"train_images/{first_id}{suffix}": data},
    )
    with Archive(bad) as arc, pytest.raises(LayoutError, match=rf"1 file is not a .*{first_id}{suffix}"):
        read_aptos(arc)
