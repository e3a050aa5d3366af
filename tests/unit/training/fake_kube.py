"""A stand-in for the Kubernetes API server's batch/v1 Jobs endpoints, for tests where no cluster
exists: create (validated against the real Kubernetes OpenAPI schema by kubernetes-validate,
refused without the bearer token), read, delete. `run` makes it a kubelet too: it starts the
Job's container command as a local process and reports the Job succeeded or failed by its exit
code, so the training service's cluster mode runs end to end against it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

KUBE_VERSION = "1.34.0"


@dataclass
class FakeKube:
    token: str
    namespace: str
    run: Callable[[dict[str, Any]], dict[str, str]] | None = (
        None  # Job -> env to run it with; None: never runs
    )
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeKube:
        app = web.Application()
        base = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        app.router.add_post(base, self._create)
        app.router.add_get(base + "/{name}", self._read)
        app.router.add_delete(base + "/{name}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        body = await request.json()
        try:
            import kubernetes_validate

            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except ImportError:
            print(
                "fake_kube: kubernetes-validate not installed; Job bodies not schema-checked", file=sys.stderr
            )
        except Exception as exc:  # the API server's answer to an invalid object
            return web.json_response({"message": f"Job is invalid: {exc}"}, status=422)
        name = body["metadata"]["name"]
        if name in self.jobs:
            return web.json_response({"message": f'jobs.batch "{name}" already exists'}, status=409)
        job = {**body, "status": {"active": 1}}
        self.jobs[name] = job
        self.created.append(body)
        if self.run is not None:
            container = body["spec"]["template"]["spec"]["containers"][0]
            argv = [*container["command"], *container.get("args", [])]
            argv = [sys.executable if a == "python" else a for a in argv]
            env = {**os.environ, **self.run(body)}
            proc = await asyncio.create_subprocess_exec(*argv, env=env)
            self.procs[name] = proc
            asyncio.get_running_loop().create_task(self._finish(name, proc))
        return web.json_response(job, status=201)

    async def _finish(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        job = self.jobs.get(name)
        if job is not None:
            job["status"] = {"succeeded": 1} if code == 0 else {"failed": 1}

    def finish(self, name: str, *, succeeded: bool) -> None:
        """A Job that runs nothing here ends as told."""
        self.jobs[name]["status"] = {"succeeded": 1} if succeeded else {"failed": 1}

    async def _read(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        job = self.jobs.get(request.match_info["name"])
        if job is None:
            return web.json_response({"message": "not found"}, status=404)
        return web.json_response(job)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        name = request.match_info["name"]
        job = self.jobs.pop(name, None)
        if job is None:
            return web.json_response({"message": "not found"}, status=404)
        self.deleted.append(name)
        proc = self.procs.get(name)
        if proc is not None and proc.returncode is None:
            proc.terminate()
        return web.json_response({"status": "Success"})
