"""pylxd against cairnd over HTTPS: what a Python user of LXD/Incus would do first.

Run by daemon/tests/pylxd.rs as
    python pylxd_client.py ENDPOINT CERT KEY TOKEN IMAGE_ALIAS INSTANCE_NAME
with REQUESTS_CA_BUNDLE unset (requests lets it override verify=False). Prints each step
so that a failure shows how far it got; exits non-zero on the first failed check.
"""

import sys
import time

import pylxd
from pylxd import exceptions


def step(msg):
    print(f"-- {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main():
    endpoint, cert, key, token, alias, name = sys.argv[1:7]

    step(f"connecting to {endpoint} (pylxd {pylxd.__version__})")
    client = pylxd.Client(endpoint=endpoint, cert=(cert, key), verify=False, timeout=120)
    check(not client.trusted, "a fresh client certificate should not be trusted yet")
    check(
        client.has_api_extension("explicit_trust_token"),
        "/1.0 must list explicit_trust_token or pylxd sends the token as a password",
    )

    step("authenticating with the trust token")
    client.authenticate(token)
    check(client.trusted, f"not trusted after authenticate: auth={client.host_info.get('auth')!r}")

    step(f"creating {name} from alias {alias}")
    client.instances.create(
        {"name": name, "source": {"type": "image", "alias": alias}}, wait=True
    )
    inst = client.instances.get(name)
    check(inst.status == "Stopped", f"new instance status {inst.status!r}, want Stopped")

    step("starting it")
    inst.start(wait=True)
    check(inst.status == "Running", f"status after start {inst.status!r}, want Running")

    step("exec: sh -c 'echo hi; exit 3'")
    res = inst.execute(["sh", "-c", "echo hi; exit 3"])
    check(res.exit_code == 3, f"exit code {res.exit_code!r}, want 3")
    check(res.stdout == "hi\n", f"stdout {res.stdout!r}, want 'hi\\n'")
    check(res.stderr == "", f"stderr {res.stderr!r}, want ''")

    step("files: put then get /root/hello.txt")
    payload = b"hello from pylxd\n\x00\xffbinary tail"
    inst.files.put("/root/hello.txt", payload, mode=0o640)
    got = inst.files.get("/root/hello.txt")
    check(got == payload, f"pulled {got!r}, pushed {payload!r}")
    res = inst.execute(["stat", "-c", "%a %u %g %s", "/root/hello.txt"])
    check(
        res.stdout.split() == ["640", "0", "0", str(len(payload))],
        f"stat of the pushed file inside the container: {res.stdout!r} {res.stderr!r}",
    )

    step("stopping it")
    inst.stop(wait=True)
    check(inst.status == "Stopped", f"status after stop {inst.status!r}, want Stopped")

    step("deleting it")
    inst.delete(wait=True)
    check(not client.instances.exists(name), f"{name} still exists after delete")
    names = [i.name for i in client.instances.all()]
    check(name not in names, f"{name} still listed: {names}")
    try:
        client.instances.get(name)
        raise AssertionError(f"GET {name} after delete should be 404")
    except exceptions.NotFound:
        pass

    step("ok")


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"-- done in {time.monotonic() - t0:.1f}s", flush=True)
