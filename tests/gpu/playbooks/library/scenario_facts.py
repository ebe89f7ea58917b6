#!/usr/bin/python
"""Sets a host's facts from the test's scenario, as fact gathering would (tests/gpu only).

The GPU tier renders the roles for machines this controller is not: each host runs locally with
the facts a GPU node of the scenario would report (distribution, architecture, kernel, memory,
mounts, addresses). ``_ansible_facts_gathered`` keeps the preflight's own gathering (smart) from
replacing them with this machine's.
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True
    )
    facts = dict(module.params["facts"])
    facts["_ansible_facts_gathered"] = True
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
