"""Where jobs run: a self-healing local process pool or a Dask cluster, behind one `JobPool` (docs/design.md §5).

`job` (a job, its result, loading and storing on the coordinator), `render` (the pure bytes → bytes part),
`pool` (bounded intake, crash and timeout handling), `local` (worker processes of this machine),
`dask_cluster` and `dask_worker` (the coordinator's and a remote worker's side of a Dask cluster),
`backend` (the pool a config asks for).
"""
