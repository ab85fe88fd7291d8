"""conveyor's task namespace: top-level verbs plus detail collections (``env.*``).

Importing this module imports invoke and the task modules only; the core (config, docker, boto3) is
imported inside task bodies so ``invoke --list`` stays fast.
"""

from __future__ import annotations

from invoke.collection import Collection

from conveyor.tasks import deploy, doctor, env, image, quality, stack


def namespace() -> Collection:
    """Build a fresh Collection (each caller gets its own; nothing is shared at module level)."""
    ns = Collection()
    verbs = (
        quality.lint,
        quality.typecheck,
        quality.test,
        quality.security,
        image.build,
        stack.up,
        stack.down,
        stack.ps,
        stack.logs,
        stack.exec_,
        deploy.deploy,
        deploy.plan,
        deploy.rollback,
        deploy.history,
        doctor.doctor,
    )
    for verb in verbs:
        ns.add_task(verb)
    ns.add_collection(Collection.from_module(env, name="env"))
    images = Collection("image")
    for detail in (image.base, image.standins, image.smoke, image.push):
        images.add_task(detail)
    ns.add_collection(images)
    ns.add_collection(Collection("lock", deploy.release_lock))
    return ns
