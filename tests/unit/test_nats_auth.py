"""nats_auth: CONNECT fields from a .creds or NKey seed file, and its refusals, with no
server (the real-server proof is tests/test_nats_permissions.py)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import nkeys
import pytest

from tests.conftest import remember_secret
from tests.nats_jwt import Identity, OperatorMode, creds_text, new_account, new_user, user_jwt
from token_worker.cli import request_main
from token_worker.errors import NatsCredentialsError
from token_worker.logs import RedactSecrets
from token_worker.nkey_auth import CredsFileAuth, NkeySeedFileAuth, load_creds_file, load_nkey_file

NONCE = "wD7hUfHZtkzMMYv"


def verify(public: str, nonce: str, signature: str) -> bool:
    """Check a base64url signature against a public NKey with PyNaCl (nkeys' backend)."""
    import nacl.signing

    raw = base64.b32decode(public + "=" * (-len(public) % 8))[1:-2]
    padded = signature + "=" * (-len(signature) % 4)
    nacl.signing.VerifyKey(raw).verify(nonce.encode(), base64.urlsafe_b64decode(padded))
    return True


@pytest.fixture
def mode() -> OperatorMode:
    return OperatorMode()


def test_creds_file_answers_the_nonce_with_the_jwt_and_a_urlsafe_signature(
        tmp_path: Path, mode: OperatorMode) -> None:
    path, user = mode.user_creds(tmp_path, "worker")
    auth = load_creds_file(path)

    fields = auth.connect_auth_fields({"nonce": NONCE, "server_id": "N1"})

    assert set(fields) == {"jwt", "sig"}
    assert fields["jwt"] in path.read_text()
    assert "=" not in fields["sig"] and "+" not in fields["sig"] and "/" not in fields["sig"]
    assert verify(user.public, NONCE, fields["sig"])


def test_read_returns_the_public_facts_of_the_jwt(tmp_path: Path, mode: OperatorMode) -> None:
    path, user = mode.user_creds(tmp_path, "worker", expires=2_000_000_000)
    info = CredsFileAuth(path).read()
    assert (info.user, info.issuer, info.name, info.expires_at) == (
        user.public, mode.account.public, "worker", 2_000_000_000)


def test_no_nonce_means_no_credential_on_the_wire(tmp_path: Path, mode: OperatorMode) -> None:
    path, _ = mode.user_creds(tmp_path, "worker")
    assert load_creds_file(path).connect_auth_fields({"server_id": "N1"}) == {}


def test_every_connect_reads_the_file_again(tmp_path: Path, mode: OperatorMode) -> None:
    """A rotated creds file is used on the next (re)connect, with no restart."""
    path, first = mode.user_creds(tmp_path, "worker")
    auth = load_creds_file(path)
    assert verify(first.public, NONCE, auth.connect_auth_fields({"nonce": NONCE})["sig"])

    second = new_user()
    path.write_text(creds_text(user_jwt(second, mode.account, "worker"), second.seed))

    fields = auth.connect_auth_fields({"nonce": NONCE})
    assert verify(second.public, NONCE, fields["sig"])
    with pytest.raises(nacl_bad_signature()):
        verify(first.public, NONCE, fields["sig"])


def nacl_bad_signature() -> type[Exception]:
    import nacl.exceptions

    return nacl.exceptions.BadSignatureError


def _creds_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.creds"
    path.write_text(text)
    return path


def test_malformed_creds_files_are_refused_naming_the_problem_not_the_secret(
        tmp_path: Path, mode: OperatorMode) -> None:
    user, other = new_user(), new_user()
    jwt = user_jwt(user, mode.account)
    account_seed = new_account().seed
    corrupt_seed = user.seed[:-3] + ("AAA" if not user.seed.endswith("AAA") else "BBB")
    cases = {
        "file does not exist": None,
        "file is empty": "",
        "no 'BEGIN NATS USER JWT' block": f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n"
                                          "------END USER NKEY SEED------\n",
        "no 'BEGIN USER NKEY SEED' block": f"-----BEGIN NATS USER JWT-----\n{jwt}\n"
                                           "------END NATS USER JWT------\n",
        "the user JWT is not a JWT": creds_text("not-a-jwt", user.seed),
        "does not decode": creds_text("e30.bm90anNvbg.x", user.seed),
        "not a valid NKey seed (checksum)": creds_text(jwt, corrupt_seed),
        "not a user seed": creds_text(jwt, account_seed),
        f"the seed is for user {other.public}": creds_text(jwt, other.seed),
    }
    for expected, text in cases.items():
        path = tmp_path / "missing.creds" if text is None else _creds_with(tmp_path, text)
        with pytest.raises(NatsCredentialsError) as caught:
            load_creds_file(path)
        message = str(caught.value)
        assert expected in message
        assert str(path) in message
        assert isinstance(caught.value, ValueError)
        for secret in (user.seed, other.seed, account_seed, corrupt_seed, jwt):
            assert secret not in message
            assert secret not in repr(caught.value)


def test_nkey_seed_file_answers_with_the_public_key(tmp_path: Path) -> None:
    user = new_user()
    path = tmp_path / "user.nk"
    path.write_text(user.seed + "\n")
    auth = load_nkey_file(path)

    fields = auth.connect_auth_fields({"nonce": NONCE})

    assert fields["nkey"] == user.public == auth.read()
    assert verify(user.public, NONCE, fields["sig"])
    assert auth.connect_auth_fields({}) == {}


def test_nkey_file_may_be_a_creds_style_seed_block(tmp_path: Path) -> None:
    user = new_user()
    path = tmp_path / "user.nk"
    path.write_text(
        f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n")
    assert load_nkey_file(path).read() == user.public


@pytest.mark.parametrize("content", ["", "SUNOTASEED", "two words", "-----BEGIN X-----\n"])
def test_malformed_nkey_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "user.nk"
    path.write_text(content)
    with pytest.raises(NatsCredentialsError) as caught:
        load_nkey_file(path)
    assert caught.value.problem
    assert str(path) in str(caught.value)


def test_an_account_seed_is_not_a_user_nkey(tmp_path: Path) -> None:
    account = Identity.new(nkeys.PREFIX_BYTE_ACCOUNT)
    path = tmp_path / "account.nk"
    path.write_text(account.seed)
    with pytest.raises(NatsCredentialsError, match="not a user seed") as caught:
        load_nkey_file(path)
    assert account.seed not in str(caught.value)


def test_repr_and_str_never_show_the_jwt_seed_or_signature(
        tmp_path: Path, mode: OperatorMode) -> None:
    path, user = mode.user_creds(tmp_path, "worker")
    seed_path = tmp_path / "user.nk"
    seed_path.write_text(user.seed)
    creds, nkey = load_creds_file(path), load_nkey_file(seed_path)
    fields = creds.connect_auth_fields({"nonce": NONCE})
    nkey_fields = nkey.connect_auth_fields({"nonce": NONCE})
    shown = " ".join([repr(creds), str(creds), repr(nkey), str(nkey), creds.describe(),
                      nkey.describe(), repr(fields), str(fields), repr(nkey_fields)])
    for secret in (user.seed, fields["jwt"], fields["sig"], nkey_fields["sig"]):
        assert secret not in shown
    assert user.public in repr(nkey_fields)


def test_a_jwt_that_reaches_a_log_line_is_redacted(
        tmp_path: Path, mode: OperatorMode, caplog: pytest.LogCaptureFixture) -> None:
    path, _ = mode.user_creds(tmp_path, "worker")
    redacting = RedactSecrets()
    handler = logging.NullHandler()
    handler.addFilter(redacting)
    root = logging.getLogger()
    root.addHandler(handler)  # where a process's lines are written: the root's handlers
    try:
        jwt = load_creds_file(path).connect_auth_fields({"nonce": NONCE})["jwt"]
    finally:
        root.removeHandler(handler)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "connect %s", (jwt,), None)
    redacting.filter(record)
    assert jwt not in record.getMessage()


def test_the_same_nonce_signed_twice_gives_the_same_signature(tmp_path: Path) -> None:
    """Ed25519 is deterministic; a second call reads the file again and still works (the
    seed was wiped from the first call's buffer only)."""
    user = new_user()
    path = tmp_path / "user.nk"
    path.write_text(user.seed)
    auth = NkeySeedFileAuth(path)
    assert auth.connect_auth_fields({"nonce": NONCE}) == auth.connect_auth_fields(
        {"nonce": NONCE})


def test_a_bad_rotated_file_fails_the_connect_attempt_with_a_typed_error(
        tmp_path: Path, mode: OperatorMode) -> None:
    path, user = mode.user_creds(tmp_path, "worker")
    auth = load_creds_file(path)
    other = new_user()
    path.write_text(creds_text(user_jwt(user, mode.account), other.seed))
    with pytest.raises(NatsCredentialsError, match="the seed is for user") as caught:
        auth.connect_auth_fields({"nonce": NONCE})
    assert other.seed not in str(caught.value)
    path.unlink()
    with pytest.raises(NatsCredentialsError, match="file does not exist"):
        auth.connect_auth_fields({"nonce": NONCE})


def test_token_request_refuses_a_malformed_nkey_file_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = new_user().seed
    remember_secret(seed)
    path = tmp_path / "broken.nk"
    path.write_text(seed[:-4] + "AAAA\n")
    assert request_main(["--credential", "orders", "--nkey", str(path)]) == 2
    error = capsys.readouterr().err
    assert "nats.nkeyFile" in error and "flag --nkey" in error and seed[:16] not in error


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0", "soon", "1e10"])
def test_token_request_refuses_a_timeout_that_is_no_time_above_0(timeout, capsys):
    """A usage error (exit 2), not a request that never ends (nan) or ends at once."""
    assert request_main(["--credential", "orders", "--timeout", timeout]) == 2
    assert f"argument --timeout: {timeout!r} is not a number of seconds" in capsys.readouterr().err


def test_token_request_refuses_a_flag_or_secret_that_was_not_utf8(monkeypatch, capsys):
    """A usage error (exit 2) naming the flag, never a traceback."""
    assert request_main(["--client-id", "\udcff", "--client-secret-env", "TW_SECRET"]) == 2
    assert "--client-id is not valid UTF-8" in capsys.readouterr().err
    monkeypatch.setenv("TW_SECRET", "s3cret\udcff")
    assert request_main(["--client-id", "orders", "--client-secret-env", "TW_SECRET",
                         "--nats-url", "nats://127.0.0.1:9"]) == 2
    assert "TW_SECRET is not valid UTF-8" in capsys.readouterr().err
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:9\udcff")
    assert request_main(["--credential", "orders"]) == 2
    assert "NATS_URL is not valid UTF-8" in capsys.readouterr().err
