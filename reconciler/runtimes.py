"""Where runtime containers' namespaces come from: the running containers of
Docker and Podman, found by name through each engine's API socket.

This is the only module that imports the docker SDK, which speaks to Docker
and to Podman's Docker-compatible API alike. It turns a spec's `runtime`
containers into what the rest of the engine already knows: a namespace path
(`/proc/PID/ns/net` of the container's main process, attached to and never
created or deleted, as `netns_path`) and the hosts file the engine gave the
container. Containers that are not running stay in the spec unattached, so the
planner stays pure and never asks an engine anything (containerd's CNI plugin
and netavark also take a namespace path and never ask who made it).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import lock
from reconciler.errors import MachineError, NetapplyError, Problem
from reconciler.model import Container, NetworkMode, Runtime, Spec

# The engines' own conventions: DOCKER_HOST (Docker's CLI and SDK) and
# CONTAINER_HOST (Podman's remote client); rootful default sockets otherwise.
ENV = {Runtime.DOCKER: "DOCKER_HOST", Runtime.PODMAN: "CONTAINER_HOST"}
DEFAULT_URL = {
    Runtime.DOCKER: "unix:///var/run/docker.sock",
    Runtime.PODMAN: "unix:///run/podman/podman.sock",
}
API_TIMEOUT = 10.0  # seconds for one API call; an engine that hangs is "not answering"
NO_NETWORK = "none"


def engine_url(runtime: Runtime, given: str | None = None) -> str:
    """Where an engine's API is: `given` (--docker-host/--podman-host), else the
    engine's environment variable, else its default rootful socket."""
    return given or os.environ.get(ENV[runtime]) or DEFAULT_URL[runtime]


@dataclass(frozen=True)
class Running:
    """A running container of an engine, as netapply attaches to it."""

    runtime: Runtime
    name: str  # the engine's name for it
    id: str  # the engine's full id
    pid: int  # its main process, whose namespace is the container's
    hosts_path: str  # the hosts file the engine bind-mounts at /etc/hosts
    network_mode: str  # the engine's network mode: netapply needs "none"

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class Resolution:
    """A spec whose runtime containers are resolved: a running one has
    netns_path and hosts_path set; any other has running=False and a note."""

    spec: Spec
    running: Mapping[str, Running]  # by container name in the spec
    skipped: Mapping[str, str] = field(default_factory=dict)  # container name -> why

    @property
    def notes(self) -> tuple[str, ...]:
        """A sentence per container that is skipped, for plans and logs."""
        return tuple(self.skipped.values())

    def labels(self) -> dict[str, str]:
        """Namespace path -> what it is, for plans: `docker container web (0123456789ab)`."""
        return {r.netns_path: f"{r.runtime} container {r.name} ({r.short_id})"
                for r in self.running.values()}

    def to_json(self) -> list[dict[str, object]]:
        """Each runtime container of the spec: attached (with its engine's id
        and namespace) or skipped (with why)."""
        out: list[dict[str, object]] = []
        for c in self.spec.containers.values():
            if c.runtime is None:
                continue
            found = self.running.get(c.name)
            entry: dict[str, object] = {"container": c.name, "runtime": str(c.runtime),
                                        "name": c.engine_name, "attached": found is not None}
            if found is not None:
                entry.update(id=found.short_id, netns_path=found.netns_path,
                             hosts_path=found.hosts_path)
            else:
                entry["why"] = self.skipped.get(c.name, "")
            out.append(entry)
        return out


def _api_client(url: str, version: str | None = None) -> Any:
    """The docker SDK's low-level client: one HTTP call per method, no hidden
    inspect per container as its high-level list does. The API version is
    asked of the engine (Docker and Podman differ) unless it is known."""
    import docker  # type: ignore[import-untyped]  # only when a spec names an engine

    return docker.APIClient(base_url=url, timeout=API_TIMEOUT, version=version)


class EngineUnavailable(Exception):
    """An engine did not answer (not running, wrong socket, refused)."""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (proc(5), field 22),
    which tells a process from a later one given the same PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


class Resolver:
    """Finds a spec's runtime containers: one list call per engine the spec
    uses, and an inspect only for a container not seen running before (a
    restart gives it a new main process, so what inspect said is kept per
    container id and process start time). Kept by watch across reconciles."""

    def __init__(self, urls: Mapping[Runtime, str | None] | None = None,
                 cache: str | None = None):
        self.urls = {runtime: engine_url(runtime, (urls or {}).get(runtime))
                     for runtime in Runtime}
        self._clients: dict[Runtime, Any] = {}
        self._inspected: dict[tuple[Runtime, str], tuple[Running, int | None]] = {}
        # `cache`: a private file (lock.write_private) that keeps what inspect
        # said across runs of the CLI, so that a no-op plan makes only the list
        # calls. Only a hint: an entry counts while its container id is listed
        # running and its main process has the start time it had then.
        self.cache = cache
        self._cache_read = False
        self._cache_text = ""
        self._versions: dict[str, str] = {}  # engine URL -> the API version it speaks

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def resolve(self, spec: Spec, host: str | None = None) -> Resolution:
        """The spec with its runtime containers (on this machine, `host`)
        resolved. Raises MachineError, naming each, for containers that run
        with a network of their engine (netapply would fight the engine)."""
        wanted = [c for c in spec.containers.values()
                  if c.runtime is not None and c.network_mode != NetworkMode.HOST
                  and (host is None or c.host in (host, None))]
        if not wanted:
            return Resolution(spec, {})
        self._read_cache()
        listed: dict[Runtime, dict[str, dict[str, Any]] | str] = {}
        for runtime in sorted({c.runtime for c in wanted if c.runtime is not None}):
            try:
                listed[runtime] = self._list(runtime)
            except EngineUnavailable as e:
                listed[runtime] = str(e)
        containers = dict(spec.containers)
        running: dict[str, Running] = {}
        notes: dict[str, str] = {}
        problems: list[Problem] = []
        for container in wanted:
            assert container.runtime is not None
            what = (f"container '{container.name}' ({container.runtime} container "
                    f"'{container.engine_name}')")
            by_name = listed[container.runtime]
            if isinstance(by_name, str):
                notes[container.name] = f"{what}: skipped, {by_name}"
                continue
            entry = by_name.get(container.engine_name)
            if entry is None:
                notes[container.name] = (f"{what}: skipped, no such container; it is "
                                         "attached once it is started")
                continue
            if entry.get("State") != "running":
                notes[container.name] = (f"{what}: skipped, it is "
                                         f"{entry.get('State') or 'not running'}; it is "
                                         "attached once it is started")
                continue
            try:
                found = self._inspect(container.runtime, container.engine_name, entry["Id"])
            except EngineUnavailable as e:
                notes[container.name] = f"{what}: skipped, {e}"
                continue
            if found is None:
                notes[container.name] = f"{what}: skipped, it stopped while netapply looked"
                continue
            if found.network_mode != NO_NETWORK:
                problems.append(Problem(
                    spec.locate("containers", container.name, "runtime"),
                    f"{what} runs with the network '{found.network_mode}' of its engine; "
                    f"start it with --network none, so that netapply alone networks it",
                ))
                continue
            running[container.name] = found
            containers[container.name] = _attached(container, found)
        self._write_cache(listed)
        if problems:
            raise MachineError(problems)
        return Resolution(replace(spec, containers=containers), running, notes)

    def _read_cache(self) -> None:
        if self.cache is None or self._cache_read:
            return
        self._cache_read = True
        text = lock.read_private(self.cache)
        if not text:
            return
        try:
            data = json.loads(text)
            self._versions.update({str(k): str(v) for k, v in data["api_versions"].items()})
            for e in data["containers"]:
                runtime = Runtime(e["runtime"])
                if e["url"] != self.urls[runtime]:
                    continue
                found = Running(runtime, str(e["name"]), str(e["id"]), int(e["pid"]),
                                str(e["hosts_path"]), str(e["network_mode"]))
                self._inspected[(runtime, found.id)] = (found, int(e["start"]))
        except (ValueError, KeyError, TypeError):
            self._inspected.clear()  # not ours, or another version's: ask again
            self._versions.clear()
        self._cache_text = text

    def _write_cache(self, listed: Mapping[Runtime, object]) -> None:
        """Keep what is known of the containers the engines listed this time
        (what is gone from them is forgotten); written only when it changed."""
        listed_ids = {(runtime, str(entry.get("Id"))) for runtime, by_name in listed.items()
                      if isinstance(by_name, dict) for entry in by_name.values()}
        answered = {runtime for runtime, by_name in listed.items() if isinstance(by_name, dict)}
        for key in [k for k in self._inspected if k[0] in answered and k not in listed_ids]:
            del self._inspected[key]
        if self.cache is None:
            return
        entries = [
            {"runtime": str(r.runtime), "url": self.urls[r.runtime], "name": r.name, "id": r.id,
             "pid": r.pid, "start": start, "hosts_path": r.hosts_path,
             "network_mode": r.network_mode}
            for (r, start) in sorted(self._inspected.values(), key=lambda v: v[0].id)
            if start is not None
        ]
        text = json.dumps({"containers": entries, "api_versions": self._versions},
                          sort_keys=True)
        if text != self._cache_text:
            with contextlib.suppress(NetapplyError, OSError):  # only a cache
                lock.write_private(self.cache, text)
            self._cache_text = text

    def _client(self, runtime: Runtime) -> Any:
        client = self._clients.get(runtime)
        if client is None:
            url = self.urls[runtime]
            try:
                client = _api_client(url, self._versions.get(url))
            except Exception as e:  # the SDK raises its own, requests' and OSError
                raise EngineUnavailable(self._why(runtime, e)) from None
            self._versions[url] = client.api_version
            self._clients[runtime] = client
        return client

    def _why(self, runtime: Runtime, error: BaseException) -> str:
        return f"{runtime} does not answer at {self.urls[runtime]} ({_cause(error)})"

    def _list(self, runtime: Runtime) -> dict[str, dict[str, Any]]:
        """All containers of the engine (one API call), by name. With an API
        version from the cache that the engine no longer takes (it was
        upgraded), the version is asked again, once."""
        url = self.urls[runtime]
        for attempt in (1, 2):
            try:
                entries = self._client(runtime).containers(all=True)
                break
            except EngineUnavailable:
                raise
            except Exception as e:
                self._forget(runtime)
                if attempt == 1 and self._versions.pop(url, None) is not None:
                    continue
                raise EngineUnavailable(self._why(runtime, e)) from None
        by_name: dict[str, dict[str, Any]] = {}
        for entry in entries:
            for name in entry.get("Names") or ():
                by_name[name.lstrip("/")] = entry
        return by_name

    def _inspect(self, runtime: Runtime, name: str, cid: str) -> Running | None:
        cached = self._inspected.get((runtime, cid))
        if cached is not None and cached[1] is not None and _start_time(cached[0].pid) == cached[1]:
            return replace(cached[0], name=name)  # a `docker rename` keeps the process
        try:
            info = self._client(runtime).inspect_container(cid)
        except Exception as e:
            if getattr(getattr(e, "response", None), "status_code", None) == 404:
                return None  # removed since the list
            self._forget(runtime)
            raise EngineUnavailable(self._why(runtime, e)) from None
        state = info.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            return None
        found = Running(
            runtime=runtime, name=name, id=info["Id"], pid=pid,
            hosts_path=info.get("HostsPath") or "",
            network_mode=(info.get("HostConfig") or {}).get("NetworkMode") or "",
        )
        self._inspected[(runtime, cid)] = (found, _start_time(pid))
        return found

    def _forget(self, runtime: Runtime) -> None:
        """After a failed call, reconnect next time (the engine may have restarted)."""
        client = self._clients.pop(runtime, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _os_error(error: object, depth: int = 0) -> OSError | None:
    """The OSError under the SDK's and requests' wrappers, if there is one."""
    if isinstance(error, OSError) and error.errno is not None:
        return error
    if not isinstance(error, BaseException) or depth > 6:
        return None
    for inner in (*error.args, error.__cause__, error.__context__):
        found = _os_error(inner, depth + 1)
        if found is not None:
            return found
    return None


def _cause(error: BaseException) -> str:
    """Why an engine did not answer, in words: the system's reason where there
    is one ("No such file or directory" for a socket that is not there)."""
    found = _os_error(error)
    if found is not None:
        return os.strerror(found.errno) if found.errno else str(found)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def _attached(container: Container, found: Running) -> Container:
    return replace(container, netns_path=found.netns_path,
                   hosts_path=found.hosts_path or None, running=True)


# Container events that can change a namespace or a hosts file (Podman's
# compatible API says "died" where Docker says "die").
EVENT_ACTIONS = frozenset({"start", "restart", "die", "died", "destroy", "remove"})
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0


class EngineEvents:
    """One thread per engine following its event stream (`GET /events`): each
    start, restart, death or removal of a container the spec names is one more
    "look again" for watch. A lost stream (the engine stopped or restarted) is
    logged once and reconnected with backoff; reconnecting is itself a
    trigger, since events may have been missed meanwhile."""

    def __init__(self, urls: Mapping[Runtime, str], notify: Callable[[str], None],
                 log_error: Callable[[str], None], log_info: Callable[[str], None]):
        self.urls = dict(urls)
        self.notify = notify
        self.log_error = log_error
        self.log_info = log_info
        self.names: dict[Runtime, frozenset[str]] = {}
        self._stop = threading.Event()
        self._threads: dict[Runtime, threading.Thread] = {}
        self._streams: dict[Runtime, Any] = {}
        self._lock = threading.Lock()

    def follow(self, names: Mapping[Runtime, frozenset[str]]) -> None:
        """Follow the engines that have names (the spec's runtime containers)."""
        self.names = dict(names)
        for runtime in names:
            thread = self._threads.get(runtime)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._run, args=(runtime,), daemon=True,
                                          name=f"netapply-{runtime}-events")
                self._threads[runtime] = thread
                thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for stream in self._streams.values():
                with contextlib.suppress(Exception):
                    stream.close()
        for thread in self._threads.values():
            thread.join(timeout=2)

    def _run(self, runtime: Runtime) -> None:
        delay = 0.0
        lost = False
        while not self._stop.is_set():
            try:
                client = _api_client(self.urls[runtime])
                stream = client.events(decode=True, filters={"type": "container"})
                with self._lock:
                    self._streams[runtime] = stream
                if self._stop.is_set():
                    break
                if lost:
                    self.log_info(f"{runtime} events: connected again at {self.urls[runtime]}")
                    self.notify(f"{runtime} reconnected")
                lost, delay = False, 0.0
                for event in stream:
                    self._event(runtime, event)
                    if self._stop.is_set():
                        break
                raise ConnectionError("the event stream ended")
            except Exception as e:
                if self._stop.is_set():
                    break
                if not lost:
                    self.log_error(f"{runtime} events lost at {self.urls[runtime]} "
                                   f"({_cause(e)}); reconnecting with backoff")
                    lost = True
                delay = min(max(delay * 2, RECONNECT_FIRST), RECONNECT_MAX)
                self._stop.wait(delay)

    def _event(self, runtime: Runtime, event: Any) -> None:
        if not isinstance(event, dict):
            return
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        name = str((actor.get("Attributes") or {}).get("name") or "")
        if action in EVENT_ACTIONS and name in self.names.get(runtime, frozenset()):
            self.notify(f"{runtime} {action} {name}")
