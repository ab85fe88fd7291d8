"""Three small projects that are not this repository's app adopt conveyor with `conveyor init`, then build,
deploy to compose, survive a broken release by rolling back, scan their own code and render their CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.adoption.conftest import Adopted

pytestmark = pytest.mark.docker

FLASK = {
    "requirements.txt": "flask>=3,<4\ngunicorn>=22\n",
    "Procfile": "release: flask --app tally.web init-db\n",
    "tally/__init__.py": "",
    "tally/web.py": """
        import os
        import sqlite3

        from flask import Flask

        app = Flask(__name__)
        DB = os.environ.get("TALLY_DB", "/srv/data/tally.sqlite3")


        @app.cli.command("init-db")
        def init_db():
            with sqlite3.connect(DB) as db:
                db.execute("CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, note TEXT)")
            print("tally: table entries ready")


        @app.get("/health")
        def health():
            with sqlite3.connect(DB) as db:  # the release command must have created the table
                db.execute("SELECT count(*) FROM entries").fetchone()
            return {"status": "ok"}


        @app.get("/version")
        def version():
            return {"git_sha": os.environ.get("GIT_SHA", "unknown")}
    """,
    # The seeded bandit finding (B602: a shell with a caller's string).
    "tally/admin.py": """
        import subprocess


        def run(command):
            return subprocess.call(command, shell=True)
    """,
}

DJANGO = {
    "requirements.txt": "Django>=4.2,<6\ngunicorn>=22\n",
    "Procfile": "worker: python manage.py heartbeat\n",
    "manage.py": """
        import os
        import sys

        if __name__ == "__main__":
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookshelf.settings")
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    """,
    "bookshelf/__init__.py": "",
    "bookshelf/settings.py": """
        import os

        SECRET_KEY = os.environ.get("SECRET_KEY", "insecure-only-for-manage-py-checks")
        DEBUG = False
        ALLOWED_HOSTS = ["*"]
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shelving"]
        ROOT_URLCONF = "bookshelf.urls"
        WSGI_APPLICATION = "bookshelf.wsgi.application"
        DATABASES = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.environ.get("SHELF_DB", "/srv/data/shelf.sqlite3"),
            }
        }
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        USE_TZ = True
    """,
    "bookshelf/wsgi.py": """
        import os

        from django.core.wsgi import get_wsgi_application

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookshelf.settings")
        application = get_wsgi_application()
    """,
    "bookshelf/urls.py": """
        import os

        from django.http import JsonResponse
        from django.urls import path

        from shelving.models import Book


        def health(request):
            return JsonResponse({"status": "ok", "books": Book.objects.count()})  # needs the migration


        def version(request):
            return JsonResponse({"git_sha": os.environ.get("GIT_SHA", "unknown")})


        urlpatterns = [path("health", health), path("version", version)]
    """,
    "shelving/__init__.py": "",
    "shelving/models.py": """
        from django.db import models


        class Book(models.Model):
            title = models.CharField(max_length=200)
    """,
    "shelving/migrations/__init__.py": "",
    "shelving/migrations/0001_initial.py": """
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [
                migrations.CreateModel(
                    name="Book",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("title", models.CharField(max_length=200)),
                    ],
                )
            ]
    """,
    "shelving/management/__init__.py": "",
    "shelving/management/commands/__init__.py": "",
    "shelving/management/commands/heartbeat.py": """
        import time

        from django.core.management.base import BaseCommand

        from shelving.models import Book


        class Command(BaseCommand):
            help = "The worker: a heartbeat line every 2 seconds with the number of books."

            def handle(self, *args, **options):
                while True:
                    self.stdout.write(f"heartbeat books={Book.objects.count()}", ending="\\n")
                    self.stdout.flush()
                    time.sleep(2)
    """,
    # The seeded bandit finding (B324: md5 for security).
    "shelving/tokens.py": """
        import hashlib


        def token(value):
            return hashlib.md5(value.encode()).hexdigest()
    """,
}

STARLETTE = {
    "requirements.txt": "starlette>=0.37\nuvicorn>=0.29\n",
    "beacon/__init__.py": "",
    "beacon/main.py": """
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route


        async def health(request):
            return JSONResponse({"status": "ok"})


        async def home(request):
            return PlainTextResponse("beacon is lit")


        app = Starlette(routes=[Route("/health", health), Route("/", home)])
    """,
    "tests/test_beacon.py": """
        import asyncio

        from beacon.main import health


        def test_health_answers_ok():
            assert asyncio.run(health(None)).status_code == 200
    """,
    # The seeded bandit finding (B307: eval).
    "beacon/calc.py": """
        def compute(expression):
            return eval(expression)
    """,
}


def add_data_volume(project: Adopted, *services: str) -> None:
    """What the user does after init for an app with files that must survive deploys: a named volume."""
    path = project.root / "compose/compose.yaml"
    data = yaml.safe_load(path.read_text())
    for name in services:
        data["services"][name]["volumes"] = ["data:/srv/data"]
    data["volumes"] = {"data": None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def scan_and_render(project: Adopted, finding: str) -> None:
    """bandit finds the seeded issue in the project's own package; an empty security.paths is an ERROR;
    the CI files render and check."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    scan = [sys.executable, "-m", "conveyor.security", "--only", "bandit"]
    result = subprocess.run(scan, cwd=project.root, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FINDINGS" in result.stdout
    report = json.loads((project.root / "reports/security/bandit.json").read_text())
    assert finding in {r["test_id"] for r in report["results"]}
    (project.root / "nothing-here").mkdir()
    env["CONVEYOR_SECURITY__PATHS"] = "nothing-here"
    result = subprocess.run(scan, cwd=project.root, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ERROR" in result.stdout
    project.ok("ci.render")
    project.ok("ci.check")


def test_flask_with_a_release_command(adopt) -> None:  # type: ignore[no-untyped-def]
    project = adopt("tally", FLASK)
    assert "Flask app `tally.web:app` served by gunicorn" in project.init_output
    assert "release command: flask --app tally.web init-db" in project.init_output
    add_data_volume(project, "web")
    first = project.commit("adopt conveyor")
    project.ok("build")
    project.ok("deploy", "--env", "local")
    took = time.monotonic() - project.started
    print(f"tally: conveyor init -> first green build + deploy: {took:.1f}s; steps: {project.timings}")
    assert project.version() == first
    assert first[:12] in project.ok("history", "--env", "local")

    web = project.root / "tally/web.py"
    web.write_text(web.read_text().replace('return {"status": "ok"}', 'return {"status": "broken"}, 500'))
    broken = project.commit("break the health route")
    project.ok("build")
    result = project.invoke("deploy", "--env", "local")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert f"rolled back: serving {first[:12]} again (verified)" in result.stdout + result.stderr
    assert project.version() == first
    assert project.serving_sha() == first
    history = project.ok("history", "--env", "local")
    assert broken[:12] in history
    assert "rollback" in history

    scan_and_render(project, "B602")


def test_django_with_migrate_and_a_worker(adopt) -> None:  # type: ignore[no-untyped-def]
    project = adopt("bookshelf", DJANGO)
    assert "Django app `bookshelf.wsgi:application` served by gunicorn" in project.init_output
    assert "release command: python manage.py migrate --noinput" in project.init_output
    assert "process worker (Procfile): python manage.py heartbeat" in project.init_output
    add_data_volume(project, "web", "worker")
    first = project.commit("adopt conveyor")
    project.ok("build")
    project.ok("deploy", "--env", "local")
    assert project.version() == first
    assert json.loads(project.wait_ok("/health"))["books"] == 0
    assert project.serving_sha("worker") == first
    assert first[:12] in project.ok("history", "--env", "local")

    command = project.root / "shelving/management/commands/heartbeat.py"
    command.write_text(command.read_text().replace("while True:", "raise SystemExit(3)\n        while True:"))
    project.commit("the worker crashes")
    project.ok("build")
    result = project.invoke("deploy", "--env", "local")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "worker" in result.stdout + result.stderr
    assert f"rolled back: serving {first[:12]} again (verified)" in result.stdout + result.stderr
    assert project.version() == first
    assert project.serving_sha("worker") == first

    scan_and_render(project, "B324")


def test_starlette_without_release_or_version_route(adopt) -> None:  # type: ignore[no-untyped-def]
    project = adopt("beacon", STARLETTE)
    assert "Starlette app `beacon.main:app` served by uvicorn" in project.init_output
    assert "release command: none" in project.init_output
    assert "no version route found" in project.init_output
    invoke_yaml = yaml.safe_load((project.root / "invoke.yaml").read_text())
    assert invoke_yaml["conveyor"]["processes"]["web"]["version"] is None or (
        invoke_yaml["conveyor"]["processes"]["web"]["version"] == "none"
    )
    first = project.commit("adopt conveyor")
    project.ok("test")
    project.ok("build")
    project.ok("deploy", "--env", "local")
    assert project.wait_ok("/") == "beacon is lit"
    assert project.serving_sha() == first
    assert first[:12] in project.ok("history", "--env", "local")

    main = project.root / "beacon/main.py"
    main.write_text(
        main.read_text().replace('JSONResponse({"status": "ok"})', "JSONResponse({}, status_code=500)")
    )
    project.commit("break the health route")
    project.ok("build")
    result = project.invoke("deploy", "--env", "local")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert f"rolled back: serving {first[:12]} again (verified)" in result.stdout + result.stderr
    assert project.wait_ok("/health") == '{"status":"ok"}'
    assert project.serving_sha() == first

    scan_and_render(project, "B307")
