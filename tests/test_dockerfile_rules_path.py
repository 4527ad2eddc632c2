"""The image does not point TICKETPAGER_RULES_PATH at the bundled examples: `docker run ticketpager` outside
dry run refuses to start naming the setting (issue 14, item 6), as `ticketpager serve` does elsewhere, instead of
paging with the examples' placeholder keys. Compose and Kubernetes set it to the rules they mount."""

from __future__ import annotations

from tests.test_deploy_manifests import dockerfile_instructions


def test_the_image_leaves_the_rules_path_to_the_operator() -> None:
    env = " ".join(rest for word, rest in dockerfile_instructions() if word == "ENV")
    assert "TICKETPAGER_DATABASE_URL=" in env, "the ENV instructions were read"
    assert "TICKETPAGER_RULES_PATH" not in env
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY"]
    assert not any(rest.startswith("rules/examples") for rest in copies), "the examples ship in the package"
