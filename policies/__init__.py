"""Selection-policy presets: each YAML file names a policy kind and its parameters, with a
comment that says when to use it (docs/policies.md). A campaign spec names them under
``policies:``; installed, they are the package ``activedefect.policy_presets``."""
