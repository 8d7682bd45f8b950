"""The benchmarks of speeder_hf, an application of the library: run each from the repository root as a module,
`python -m benchmarks.<name> --help` (`prepare_catalogs`, `efficiency`, `accuracy`, `mpo_share`, `two_stage`,
`sasrec_beauty`, `item_features`, `report`). Their flags are dataclass fields parsed by `HfArgumentParser`, as the
main job's are, and the knobs they share with the job are the job's own: its argument groups, inherited
(`speeder_hf_train.arguments`), or single fields (`job_field`)."""
