"""conveyor's task namespace: top-level verbs plus detail collections (``env.*``).

Importing this module imports invoke and the task modules only; the core (config, docker, boto3) is
imported inside task bodies so ``invoke --list`` stays fast.
"""

from __future__ import annotations

from invoke.collection import Collection

from conveyor.tasks import doctor, env, image, quality


def namespace() -> Collection:
    """Build a fresh Collection (each caller gets its own; nothing is shared at module level)."""
    ns = Collection()
    for verb in (quality.lint, quality.typecheck, quality.test, quality.security, image.build, doctor.doctor):
        ns.add_task(verb)
    ns.add_collection(Collection.from_module(env, name="env"))
    images = Collection("image")
    for detail in (image.base, image.standins, image.smoke, image.push):
        images.add_task(detail)
    ns.add_collection(images)
    return ns
