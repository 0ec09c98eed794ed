"""CredentialStore on a directory the kubelet way: ``..data`` swaps, timestamped dirs,
top-level symlinks; rotation, removal, bad entries, and no torn read under load."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import report_figure
from tests.helpers import wait_until
from tests.kubelet_volume import KubeletVolume, credential_files
from token_worker.errors import CredentialsDirError, InvalidCredentialName
from token_worker.serve.credentials import (
    Credential,
    CredentialStore,
    is_valid_name,
    name_from_subject,
)


def open_store(stores: list[CredentialStore], directory: Path, **kwargs: object) -> CredentialStore:
    store = CredentialStore(directory, **kwargs)  # type: ignore[arg-type]
    stores.append(store)
    return store


def test_reads_the_kubelet_layout_and_ignores_dot_entries(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    volume.write({**credential_files("orders", "orders-id", "orders-secret",
                                     scope="read write", auth_method="client_secret_basic"),
                  **credential_files("billing", "billing-id", "billing-secret")})
    store = open_store(stores, volume.root, start=False)

    orders = store.get("orders")
    assert orders is not None
    assert (orders.name, orders.client_id, orders.client_secret.reveal(), orders.scope,
            orders.auth_method) == ("orders", "orders-id", "orders-secret", "read write",
                                    "client_secret_basic")
    billing = store.get("billing")
    assert billing is not None
    assert (billing.scope, billing.auth_method) == (None, None)
    assert store.names() == ["billing", "orders"]
    assert store.problems() == {}
    assert any(entry.name.startswith("..") for entry in volume.root.iterdir())


def test_only_one_trailing_newline_is_stripped(tmp_path: Path,
                                               stores: list[CredentialStore]) -> None:
    folder = tmp_path / "orders"
    folder.mkdir()
    (folder / "client_id").write_text("orders-id")
    (folder / "client_secret").write_text("secret ends in space \n\n")
    store = open_store(stores, tmp_path, start=False)
    credential = store.get("orders")
    assert credential is not None
    assert credential.client_id == "orders-id"
    assert credential.client_secret.reveal() == "secret ends in space \n"


def test_unknown_is_none_and_a_bad_name_is_a_distinct_error(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    volume.write(credential_files("orders", "id", "secret"))
    store = open_store(stores, volume.root, start=False)
    assert store.get("billing") is None
    for bad in ("", "..data", "a.b", "a*", ">", "orders ", "ordérs", "a/b", "x" * 2 + "\n"):
        assert not is_valid_name(bad)
        with pytest.raises(InvalidCredentialName):
            store.get(bad)
    assert is_valid_name("Orders_v2-eu")


def test_repr_never_shows_the_secret(volume: KubeletVolume,
                                     stores: list[CredentialStore]) -> None:
    volume.write(credential_files("orders", "orders-id", "orders-secret-value"))
    store = open_store(stores, volume.root, start=False)
    credential = store.get("orders")
    assert isinstance(credential, Credential)
    shown = repr(credential) + str(credential) + repr(store) + repr(credential.client_secret)
    assert "orders-secret-value" not in shown
    assert "orders-id" in shown


def test_change_add_and_remove_are_picked_up_and_logged_by_name_only(
        volume: KubeletVolume, stores: list[CredentialStore],
        caplog: pytest.LogCaptureFixture) -> None:
    volume.write({**credential_files("orders", "orders-id", "old-secret-1"),
                  **credential_files("billing", "billing-id", "billing-secret-1")})
    store = open_store(stores, volume.root, start=False)
    caplog.set_level(logging.INFO, logger="token_worker.serve.credentials")
    caplog.clear()

    volume.write({**credential_files("orders", "orders-id", "new-secret-2"),
                  **credential_files("audit", "audit-id", "audit-secret-3")})
    assert store.reload() is True

    orders = store.get("orders")
    assert orders is not None and orders.client_secret.reveal() == "new-secret-2"
    assert store.get("billing") is None
    assert store.get("audit") is not None
    events = sorted((r.getMessage(), getattr(r, "credential", None)) for r in caplog.records)
    assert events == [("credential added", "audit"), ("credential changed", "orders"),
                      ("credential removed", "billing")]
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for value in ("old-secret-1", "new-secret-2", "billing-secret-1", "audit-secret-3",
                  "orders-id", "audit-id"):
        assert value not in text
    assert store.reload() is False


def test_unusable_entries_are_not_credentials_and_say_why(
        tmp_path: Path, stores: list[CredentialStore], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="token_worker.serve.credentials")
    (tmp_path / "no-secret").mkdir()
    (tmp_path / "no-secret" / "client_id").write_text("id")
    (tmp_path / "bad-method").mkdir()
    (tmp_path / "bad-method" / "client_id").write_text("id")
    (tmp_path / "bad-method" / "client_secret").write_text("do-not-log-me")
    (tmp_path / "bad-method" / "auth_method").write_text("client_secret_jwt")  # not supported
    (tmp_path / "bad.name").mkdir()
    (tmp_path / "stray-file").write_text("x")
    store = open_store(stores, tmp_path, start=False)

    assert store.names() == []
    problems = store.problems()
    assert problems["no-secret"] == "client_secret is missing or empty"
    assert "auth_method" in problems["bad-method"]
    assert "bad.name" in problems and "stray-file" in problems
    assert {getattr(r, "credential", None) for r in caplog.records} == set(problems)
    assert "do-not-log-me" not in " ".join(str(r.__dict__) for r in caplog.records)


def test_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsDirError, match="is not a directory") as caught:
        CredentialStore(tmp_path / "nope")
    assert isinstance(caught.value, ValueError)


def test_an_unreadable_round_keeps_the_previous_set(
        tmp_path: Path, stores: list[CredentialStore]) -> None:
    volume = KubeletVolume(tmp_path / "credentials")
    volume.write(credential_files("orders", "id", "secret"))
    store = open_store(stores, volume.root, start=False)
    volume.root.rename(tmp_path / "moved")
    assert store.reload() is False
    assert store.get("orders") is not None


def test_the_reload_thread_picks_up_a_rotation_within_5_s(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    """Default interval (1 s): the time from the kubelet's swap to get() seeing it (one
    round here; tests/test_named_credentials.py measures it under load, end to end)."""
    volume.write(credential_files("orders", "orders-id", "secret-before"))
    store = open_store(stores, volume.root)
    pickups = []
    for round_ in range(1):
        volume.write(credential_files("orders", "orders-id", f"secret-after-{round_}"))

        def rotated(expected: str = f"secret-after-{round_}") -> bool:
            credential = store.get("orders")
            return credential is not None and credential.client_secret.reveal() == expected

        pickups.append(wait_until(rotated, timeout=5, what="the rotated secret"))
    report_figure(f"credential rotation pickup (reload every 1 s): "
                  f"{', '.join(f'{p:.2f}' for p in pickups)} s (limit 5 s)")
    assert max(pickups) < 5


def test_get_reads_nothing_from_disk_between_reloads(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    """The hot path is a lookup in the last snapshot: files changing under it do not
    matter until the next reload."""
    volume.write(credential_files("orders", "id-1", "secret-1"))
    changes: list[tuple[str, str]] = []
    store = open_store(stores, volume.root, start=False,
                       on_change=lambda event, name: changes.append((event, name)))
    volume.write(credential_files("billing", "id-2", "secret-2"))
    assert store.get("orders") is not None and store.get("billing") is None
    store.reload()
    assert store.get("orders") is None and store.get("billing") is not None
    assert changes == [("added", "orders"), ("added", "billing"), ("removed", "orders")]


def test_close_stops_the_reload_thread(volume: KubeletVolume) -> None:
    volume.write(credential_files("orders", "id", "secret"))
    store = CredentialStore(volume.root, interval=0.01)
    assert any(t.name == "credentials-reload" for t in threading.enumerate())
    store.close()
    store.close()
    assert not any(t.name == "credentials-reload" for t in threading.enumerate())


def test_readers_never_see_a_torn_credential_during_200_swaps(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    """Readers hammer get() while the kubelet swaps ``..data`` 200 times and the store
    reloads continuously: every pair read is (id-N, secret-N) of one version, and the
    credential is never missing."""
    volume.write(credential_files("orders", "id-0", "secret-0", scope="scope-0"))
    store = open_store(stores, volume.root, interval=0.0)
    stop = threading.Event()
    failures: list[str] = []
    reads = [0, 0]
    seen: set[str] = set()

    def reader(slot: int) -> None:
        while not stop.is_set():
            credential = store.get("orders")
            reads[slot] += 1
            if credential is None:
                failures.append("missing")
                continue
            version = credential.client_id.removeprefix("id-")
            seen.add(version)
            if (credential.client_secret.reveal(), credential.scope) != (
                    f"secret-{version}", f"scope-{version}"):
                failures.append(f"torn read of version {version}")
            time.sleep(0)  # let the writer and the reload thread have the GIL too

    threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        for version in range(1, 201):
            volume.write(credential_files("orders", f"id-{version}", f"secret-{version}",
                                          scope=f"scope-{version}"))
            time.sleep(0.002)  # pacing, not waiting: lets reloads land between swaps
        wait_until(lambda: store.get("orders") is not None
                   and store.get("orders").client_id == "id-200",  # type: ignore[union-attr]
                   timeout=5, what="the last version")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    elapsed = time.monotonic() - started
    report_figure(f"credential swaps: 200 kubelet swaps in {elapsed:.2f} s, {sum(reads)} reads, "
                  f"{len(seen)} versions seen, {len(failures)} torn or missing")
    assert failures == []
    assert len(seen) > 10


def test_the_deployment_projects_each_credential_secret_into_its_own_folder() -> None:
    """deploy/: every Secret of examples/credentials-secret.yaml reaches CREDENTIALS_DIR as
    ``<name>/<file>`` with names and files the store reads, mounted whole (no subPath)."""
    import yaml

    from tests import ROOT

    deployment = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    examples = ROOT / "deploy" / "examples"
    secrets = list(yaml.safe_load_all((examples / "credentials-secret.yaml").read_text()))
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
    assert mount["mountPath"] == env["CREDENTIALS_DIR"] and "subPath" not in mount
    volume = next(v for v in spec["volumes"] if v["name"] == "credentials")
    sources = {s["secret"]["name"]: s["secret"] for s in volume["projected"]["sources"]}
    for secret in secrets:
        source = sources[secret["metadata"]["name"]]
        folders = {item["path"].split("/")[0] for item in source["items"]}
        assert len(folders) == 1 and is_valid_name(folders.pop())
        assert {item["key"] for item in source["items"]} >= set(secret["stringData"])
        for item in source["items"]:
            assert item["path"].split("/", 1)[1] == item["key"]
            assert item["key"] in {"client_id", "client_secret", "scope", "auth_method"}


def test_a_plain_directory_without_data_link_is_reloaded_too(
        tmp_path: Path, stores: list[CredentialStore]) -> None:
    folder = tmp_path / "orders"
    folder.mkdir()
    (folder / "client_id").write_text("orders-id\n")
    (folder / "client_secret").write_text("secret-1\n")
    store = open_store(stores, tmp_path, start=False)
    (folder / "client_secret").write_text("secret-2\n")
    assert store.reload() is True
    credential = store.get("orders")
    assert credential is not None and credential.client_secret.reveal() == "secret-2"


def test_the_subject_alone_names_the_credential() -> None:
    assert name_from_subject("token.named.orders", "token.named") == "orders"
    assert name_from_subject("acme.tokens.billing-eu_2", "acme.tokens") == "billing-eu_2"
    for subject in ("token.named.", "token.named", "token.request", "token.named.a.b",
                    "other.named.orders", "token.named.ordérs", "token.named.*"):
        with pytest.raises(InvalidCredentialName):
            name_from_subject(subject, "token.named")


# --- hostile directory contents --------------------------------------------------------------


def plain_credential(root: Path, name: str, client_id: str = "id",
                     secret: str | None = "value") -> Path:  # noqa: S107 - a test value
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "client_id").write_text(client_id)
    if secret is not None:
        (folder / "client_secret").write_text(secret)
    return folder


def test_a_fifo_as_a_value_is_a_problem_for_that_credential_not_a_hang(
        tmp_path: Path, stores: list[CredentialStore],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="token_worker.serve.credentials")
    plain_credential(tmp_path, "good")
    os.mkfifo(plain_credential(tmp_path, "piped", secret=None) / "client_secret")
    made: list[CredentialStore] = []
    opener = threading.Thread(target=lambda: made.append(
        open_store(stores, tmp_path, start=False)), daemon=True)
    opener.start()
    opener.join(5)
    assert made, "opening a FIFO blocked the config load"
    store = made[0]
    assert store.names() == ["good"]
    assert store.problems()["piped"] == "client_secret is not a regular file"
    assert [r.credential for r in caplog.records] == ["piped"]  # type: ignore[attr-defined]


def test_a_fifo_arriving_in_a_rotation_does_not_stop_later_rotations(
        volume: KubeletVolume, stores: list[CredentialStore]) -> None:
    volume.write(credential_files("orders", "id", "secret-1"))
    store = open_store(stores, volume.root, interval=0.05)
    volume.write(credential_files("orders", "id", "secret-2"))
    target = volume.root / os.readlink(volume.root / "..data")
    os.mkfifo(target / "orders" / "scope")
    volume.write(credential_files("orders", "id", "secret-3"))

    def rotated() -> bool:
        credential = store.get("orders")
        return credential is not None and credential.client_secret.reveal() == "secret-3"
    wait_until(rotated, timeout=5)


def test_a_device_or_oversized_value_is_refused_unread(
        tmp_path: Path, stores: list[CredentialStore]) -> None:
    os.symlink("/dev/zero", plain_credential(tmp_path, "zero", secret=None) / "client_secret")
    big = plain_credential(tmp_path, "big", secret=None)
    (big / "client_secret").write_bytes(b"x" * (64 * 1024 + 1))
    store = open_store(stores, tmp_path, start=False)
    assert store.names() == []
    problems = store.problems()
    assert "client_secret" in problems["zero"]
    assert "larger than" in problems["big"]


def test_data_link_outside_the_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    plain_credential(outside, "evil", secret="SENTINEL-SECRET")
    for target in (str(outside), "../outside"):
        root = tmp_path / f"creds-{len(target)}"
        root.mkdir()
        os.symlink(target, root / "..data")
        with pytest.raises(CredentialsDirError, match=r"\.\.data") as caught:
            CredentialStore(root, start=False)
        assert "SENTINEL" not in str(caught.value)


def test_a_data_link_moved_outside_later_keeps_the_set_and_warns_once(
        volume: KubeletVolume, tmp_path: Path, stores: list[CredentialStore],
        caplog: pytest.LogCaptureFixture) -> None:
    volume.write(credential_files("orders", "id", "secret"))
    store = open_store(stores, volume.root, start=False)
    plain_credential(tmp_path / "outside", "evil")
    os.symlink("../outside", volume.root / "..data_tmp")
    os.rename(volume.root / "..data_tmp", volume.root / "..data")
    caplog.set_level(logging.WARNING, logger="token_worker.serve.credentials")
    caplog.clear()
    assert store.reload() is False
    assert store.reload() is False
    assert store.names() == ["orders"]
    assert [r.getMessage() for r in caplog.records] == [
        "credentials directory not reloaded, keeping the previous set"]
    assert "..data" in caplog.records[0].reason  # type: ignore[attr-defined]


def test_value_symlinks_must_stay_inside_the_directory(
        tmp_path: Path, stores: list[CredentialStore],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="token_worker.serve.credentials")
    root = tmp_path / "creds"
    (tmp_path / "secret-outside").write_text("SENTINEL-SECRET")
    os.symlink("/proc/self/environ", plain_credential(root, "env", secret=None) / "client_secret")
    os.symlink(tmp_path / "secret-outside",
               plain_credential(root, "out", secret=None) / "client_secret")
    plain_credential(tmp_path / "elsewhere", "linked")
    os.symlink(tmp_path / "elsewhere" / "linked", root / "linked")
    inside = plain_credential(root, "inside", secret=None)
    (root / "shared-secret").write_text("shared")
    os.symlink("../shared-secret", inside / "client_secret")
    store = open_store(stores, root, start=False)

    assert store.names() == ["inside"]
    problems = store.problems()
    for name in ("env", "out", "linked"):
        assert "outside the credentials directory" in problems[name], name
    logged = " ".join(str(r.__dict__) for r in caplog.records)
    assert "SENTINEL" not in logged and "PATH=" not in logged


def age(root: Path, seconds: float) -> None:
    """Set every file's times ``seconds`` into the past (out of the racy window)."""
    stamp = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        os.utime(path, (stamp, stamp))


def test_an_unchanged_plain_directory_is_not_read_again(
        tmp_path: Path, stores: list[CredentialStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(20):
        plain_credential(tmp_path, f"c{index}", secret=f"secret-{index}")
    age(tmp_path, 60)
    store = open_store(stores, tmp_path, start=False)
    store.reload()
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, *args: int, **kwargs: int) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", counting_open)
    assert store.reload() is False
    assert [path for path in opened if str(tmp_path) in path] == []

    (tmp_path / "c3" / "client_secret").write_text("secret-new")
    age(tmp_path / "c3", 30)
    assert store.reload() is True
    credential = store.get("c3")
    assert credential is not None and credential.client_secret.reveal() == "secret-new"


def test_a_same_size_rewrite_within_one_timestamp_tick_is_still_seen(
        tmp_path: Path, stores: list[CredentialStore]) -> None:
    folder = plain_credential(tmp_path, "orders", secret="secret-1")
    store = open_store(stores, tmp_path, start=False)
    store.reload()
    before = os.stat(folder / "client_secret")
    (folder / "client_secret").write_text("secret-2")
    os.utime(folder / "client_secret", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.reload() is True
    credential = store.get("orders")
    assert credential is not None and credential.client_secret.reveal() == "secret-2"
