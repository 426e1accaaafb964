"""vservers/engine/templates/__init__.py: where built templates live and who may reach them."""

from __future__ import annotations

import os
import stat

from vservers.engine import templates

NOBODY = 65534


def _stat_as(uid: int, path: str) -> str:
    """What stat(PATH) gives a process of UID that is not root: "ok" or the error's name."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        answer = "ok"
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.stat(path)
        except OSError as exc:
            answer = type(exc).__name__
        finally:
            os.write(write_end, answer.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_the_host_s_other_users_cannot_reach_a_template_s_set_uid_files(engine):
    config = engine.config
    info = templates.get(config, "busybox")
    busybox = templates.rootfs_path(config, "busybox", info.version) / "bin" / "busybox"
    assert busybox.is_file()
    assert stat.S_IMODE(config.templates_dir.stat().st_mode) == 0o700
    # Positive control: the child's stat works where nobody may search (the state root is 0711).
    assert _stat_as(NOBODY, str(config.root)) == "ok"
    assert _stat_as(NOBODY, str(busybox)) == "PermissionError"


def test_a_templates_directory_an_older_version_made_open_is_closed_at_the_next_build(engine, tmp_path):
    from vservers.engine.config import EngineConfig

    config = EngineConfig.from_env({"VSERVER_ROOT": str(tmp_path / "root")})
    config.templates_dir.mkdir(parents=True, mode=0o755)
    os.chmod(config.templates_dir, 0o755)
    base = templates.make_template_dir(config, "busybox")
    assert base == templates.template_dir(config, "busybox") and base.is_dir()
    assert stat.S_IMODE(config.templates_dir.stat().st_mode) == 0o700
