"""Drives one Python SSH client library against a server, for the sshgw client tests.

usage: drive.py CLIENT HOST KNOWN_HOSTS USER KEY WORKDIR

CLIENT is paramiko, asyncssh or pylibssh. The client verifies the host key against
KNOWN_HOSTS, runs `echo CLIENT-ok; exit 6`, uploads WORKDIR/payload.bin with SFTP to
CLIENT-up.bin, downloads it back to WORKDIR/CLIENT-down.bin, and removes the upload. A
second login without a key (keyboard-interactive, no prompt) runs `exit 3` where the
library supports that. The last stdout line is a JSON summary; any failure raises.
"""

import asyncio
import json
import os
import sys


def paramiko_client(host, known_hosts, user, key, workdir):
    import paramiko

    summary = {}
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, username=user, key_filename=key, look_for_keys=False,
                   allow_agent=False, timeout=10, auth_timeout=10)
    _, stdout, _ = client.exec_command("echo paramiko-ok; exit 6")
    summary["stdout"] = stdout.read().decode()
    summary["exit"] = stdout.channel.recv_exit_status()
    sftp = client.open_sftp()
    sftp.put(os.path.join(workdir, "payload.bin"), "paramiko-up.bin")
    sftp.get("paramiko-up.bin", os.path.join(workdir, "paramiko-down.bin"))
    sftp.remove("paramiko-up.bin")
    sftp.close()
    client.close()

    # No key: a Transport answering keyboard-interactive (zero prompts).
    transport = paramiko.Transport((host, 22))
    transport.start_client(timeout=10)
    pinned = paramiko.HostKeys(known_hosts).lookup(host)
    offered = transport.get_remote_server_key()
    if pinned is None or pinned.get(offered.get_name()) != offered:
        raise SystemExit("paramiko: host key does not match the pin")
    transport.auth_interactive(user, lambda title, instructions, prompts: [])
    channel = transport.open_session()
    channel.exec_command("exit 3")
    summary["interactive_exit"] = channel.recv_exit_status()
    transport.close()
    return summary


def asyncssh_client(host, known_hosts, user, key, workdir):
    import asyncssh

    async def run():
        summary = {}
        async with asyncssh.connect(host, username=user, known_hosts=known_hosts,
                                    client_keys=[key], agent_path=None,
                                    connect_timeout=10) as conn:
            result = await conn.run("echo asyncssh-ok; exit 6")
            summary["stdout"] = result.stdout
            summary["exit"] = result.exit_status
            async with conn.start_sftp_client() as sftp:
                await sftp.put(os.path.join(workdir, "payload.bin"), "asyncssh-up.bin")
                await sftp.get("asyncssh-up.bin", os.path.join(workdir, "asyncssh-down.bin"))
                await sftp.remove("asyncssh-up.bin")
        async with asyncssh.connect(host, username=user, known_hosts=known_hosts,
                                    client_keys=None, agent_path=None, password=None,
                                    kbdint_auth=True, connect_timeout=10) as conn:
            result = await conn.run("exit 3")
            summary["interactive_exit"] = result.exit_status
        return summary

    return asyncio.run(run())


def pylibssh_client(host, known_hosts, user, key, workdir):
    from pylibsshext.session import Session

    summary = {}
    with open(key, "rb") as f:
        private_key = f.read()
    session = Session()
    session.connect(host=host, user=user, knownhosts=known_hosts, host_key_checking=True,
                    private_key=private_key, look_for_keys=False, timeout=10)
    channel = session.new_channel()
    result = channel.exec_command("echo pylibssh-ok; exit 6")
    summary["stdout"] = result.stdout.decode()
    summary["exit"] = result.returncode
    channel.close()
    sftp = session.sftp()
    sftp.put(os.path.join(workdir, "payload.bin"), "pylibssh-up.bin")
    sftp.get("pylibssh-up.bin", os.path.join(workdir, "pylibssh-down.bin"))
    sftp.close()
    session.close()

    # No key: a (dummy) password makes pylibssh try keyboard-interactive.
    session = Session()
    session.connect(host=host, user=user, knownhosts=known_hosts, host_key_checking=True,
                    password="unused", look_for_keys=False, timeout=10)
    channel = session.new_channel()
    summary["interactive_exit"] = channel.exec_command("exit 3").returncode
    channel.close()
    session.close()
    return summary


CLIENTS = {
    "paramiko": paramiko_client,
    "asyncssh": asyncssh_client,
    "pylibssh": pylibssh_client,
}


def main():
    name, host, known_hosts, user, key, workdir = sys.argv[1:7]
    summary = CLIENTS[name](host, known_hosts, user, key, workdir)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
