"""kvstack's node-side tools: what the roles install on the nodes (roles/node_tools copies this
package to one directory, ``node_tools_dir``) and run there with ``python -m kvstack_node.X``.

Nothing here imports the controller package ``kvstack``; the controller may import this one (the
RESP client, the janitor's INFO reader, the prompt generator). Modules that run with a node's own
``python3`` (``resp``, ``kv_janitor``, ``kv_watchdog``) use the standard library only; the others
run in the serving or router venv and import what is installed there (vLLM, LMCache, Dynamo,
vllm-router, torch).
"""
