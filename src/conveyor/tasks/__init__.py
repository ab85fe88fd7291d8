"""conveyor's task namespace: top-level verbs plus detail collections (``env.*``).

Importing this module imports invoke and the task modules only; the core (config, docker, boto3) is
imported inside task bodies so ``invoke --list`` stays fast.
"""

from __future__ import annotations

from invoke.collection import Collection

from conveyor.tasks import ci, deploy, doctor, env, image, infra, logs, quality, stack


def namespace() -> Collection:
    """Build a fresh Collection (each caller gets its own; nothing is shared at module level)."""
    ns = Collection()
    verbs = (
        quality.lint,
        quality.typecheck,
        quality.rules,
        quality.test,
        quality.security,
        image.build,
        stack.up,
        stack.down,
        stack.ps,
        logs.logs,
        stack.exec_,
        deploy.deploy,
        deploy.plan,
        deploy.rollback,
        deploy.history,
        deploy.promote,
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
    ns.add_collection(Collection("ci", ci.run, ci.render, ci.check))
    ns.add_collection(Collection("infra", infra.plan, infra.up, infra.down))
    return ns


def task_names() -> set[str]:
    """Every task name as typed on the command line (``build``, ``image.smoke``, ``ci``)."""
    names: set[str] = set()

    def walk(coll: Collection, prefix: str) -> None:
        for name in coll.tasks:
            names.add(prefix + name)
        if coll.default:
            names.add(prefix.rstrip("."))
        for sub_name, sub in coll.collections.items():
            walk(sub, f"{prefix}{sub_name}.")

    walk(namespace(), "")
    return names
