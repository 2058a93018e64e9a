"""Export a trained GenRank's encode and score functions with `jax.export` for a jax-only process.

`export_scorer(model, out)` writes into `out/`:
  encode.jaxexport   serialized StableHLO of encode(params, history) -> cache, symbolic dims
                     b (users) and n (history tokens; the cache capacity is n)
  score.jaxexport    score(params, cache, candidates) -> [b, m, A] logits, symbolic b, n, m
  params.npz         the parameters, as the flat list both functions take first (arr_0, arr_1, ...)
  manifest.json      the input/output names in order, the platforms, the model config
  vocabulary.npz     (a model trained on a user's own log) raw id -> dense id, as in training;
                     the manifest names it with its SHA-256; `load_vocabulary(out)` reads and
                     checks it, and `vocabulary.items.lookup(raw_ids)` maps a request's raw ids
  aggregates.json    (a model that reads aggregate features, GenRank's default) the training data's
                     `AggregateScaling`: `LoadedExport.aggregate_scaling.transform(counts, ...)`
                     turns a feature store's counts into the `aggregates` inputs, [b, n, K] for
                     the history and [b, m, K] for the candidates, exactly as training made them

Inputs and outputs are plain dicts of arrays (the field names of `history_cache.History`,
`history_cache.Candidates` and `history_cache.HistoryCache`, with the per-block keys/values as `keys_<i>`,
`values_<i>`), so a process that imports only jax and numpy can load and call them:

    exported = jax.export.deserialize(open("scorer/score.jaxexport", "rb").read())
    params = list(np.load("scorer/params.npz").values())   # in arr_<i> order
    logits = exported.call(params, cache, candidates)

`load_export(out)` does the same from the library and refuses a params.npz whose SHA-256 is not
the manifest's; the score artifact itself returns NaN logits for parameters that are not its own
(sums over strided rows of each parameter are compared inside it, a few thousand values each, so
the check costs little per call), so a swapped file does not score plausibly wrong; the SHA-256
check of `load_export` is the exact one.

The exported functions use the jnp attention reference (a Pallas kernel would tie the artifact to
one device kind); `platforms` picks the targets (cpu, cuda, tpu; several make one multi-platform
artifact). Input checks (unknown items and users, side features out of vocabulary, too long a
history, a foreign cache) run in the library before export, not inside the artifact: the caller of
a bare artifact validates its inputs itself. Inside it, an unknown user id gets the zero
unknown-user row (`embeddings.user_rows`), never another user's; wrong input widths are refused by
the artifact's shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genrank_jax.data.aggregates import SCALING_FILE, AggregateScaling, num_aggregates
from genrank_jax.errors import GenRankError
from genrank_jax.serving import history_cache

PLATFORMS = ("cpu", "cuda", "tpu")


def input_fields(kind, config) -> list[str]:
    """The fields of `History` or `Candidates` an export of this model takes (aggregates only when it
    reads them)."""
    return [f.name for f in dataclasses.fields(kind) if f.name != "aggregates" or config.use_aggregates]


def cache_to_dict(cache: history_cache.HistoryCache) -> dict:
    out = {name: getattr(cache, name) for name in ("positions", "timestamps", "lengths", "user_ids", "normalizer",
                                                   "model_tag")}
    for i, (k, v) in enumerate(zip(cache.keys, cache.values)):
        out[f"keys_{i}"], out[f"values_{i}"] = k, v
    return out


def cache_from_dict(arrays: dict, num_blocks: int) -> history_cache.HistoryCache:
    return history_cache.HistoryCache(
        keys=tuple(arrays[f"keys_{i}"] for i in range(num_blocks)),
        values=tuple(arrays[f"values_{i}"] for i in range(num_blocks)),
        **{name: arrays[name] for name in ("positions", "timestamps", "lengths", "user_ids", "normalizer",
                                           "model_tag")})


def _abstract_inputs(config):
    """ShapeDtypeStructs of History, Candidates and the cache with symbolic b, n, m."""
    b, n, m = jax.export.symbolic_shape("b, n, m")
    features = config.features
    side, content, actions = len(features.side_vocab_sizes), features.content_dim, features.num_actions
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    history = dict(user_ids=spec((b,), "int32"), item_ids=spec((b, n), "int32"), kinds=spec((b, n), "int8"),
                   actions=spec((b, n, actions), "float32"), side=spec((b, n, side), "int32"),
                   content=spec((b, n, content), "float32"), request_index=spec((b, n), "int32"),
                   gap_bucket=spec((b, n), "int32"), slot=spec((b, n), "int32"),
                   timestamps=spec((b, n), "float32"), lengths=spec((b,), "int32"))
    candidates = dict(item_ids=spec((b, m), "int32"), side=spec((b, m, side), "int32"),
                      content=spec((b, m, content), "float32"), slot=spec((b, m), "int32"),
                      num_candidates=spec((b,), "int32"), request_index=spec((b,), "int32"),
                      gap_bucket=spec((b,), "int32"), request_time=spec((b,), "float32"))
    if config.use_aggregates:
        width = num_aggregates(features)
        history["aggregates"] = spec((b, n, width), "float32")
        candidates["aggregates"] = spec((b, m, width), "float32")
    dtype = jnp.dtype(config.dtype)
    heads, head_dim = config.num_heads, config.head_dim
    cache = dict(positions=spec((b, n), "int32"), timestamps=spec((b, n), "float32"), lengths=spec((b,), "int32"),
                 user_ids=spec((b,), "int32"), normalizer=spec((b,), "int32"), model_tag=spec((2,), "uint32"))
    for i in range(config.num_blocks):
        cache[f"keys_{i}"] = cache[f"values_{i}"] = spec((b, n, heads, head_dim), dtype)
    return history, candidates, cache


def check_platforms(platforms) -> tuple[str, ...]:
    platforms = tuple(platforms)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise GenRankError(f"unknown export platform(s) {unknown or list(platforms)}; choose from {list(PLATFORMS)}")
    return platforms


def check_exportable(model) -> None:
    """GenRankError unless `model` is one `export_scorer` can export (a GenRank model)."""
    if model.config.architecture != "genrank":
        raise GenRankError(f"only GenRank models are exported for serving, not {model.config.architecture!r}")


def check_aggregate_scaling(model, scaling) -> None:
    """GenRankError unless a model that reads aggregate features has the scaling it was trained with."""
    if not model.config.use_aggregates:
        return
    width = num_aggregates(model.config.features)
    if scaling is None:
        raise GenRankError(f"this model reads {width} aggregate features (use_aggregates): exporting it needs the "
                           f"training data's AggregateScaling ({SCALING_FILE} beside the run's checkpoints; "
                           "genrank_jax.data.aggregates.aggregate_scaling(train_dataset) from Python), so serving "
                           "can make the same inputs from a feature store's counts")
    if len(scaling.names) != width:
        raise GenRankError(f"the aggregate scaling has {len(scaling.names)} columns but the model reads {width}: it "
                           "belongs to data with other actions or side features")


def export_scorer(model, out, *, platforms=("cpu",), vocabulary=None, aggregate_scaling=None,
                  overwrite: bool = False) -> pathlib.Path:
    """Write encode/score artifacts, parameters and manifest of `model` into folder `out`
    (and `vocabulary`, the Vocabulary of a model trained on a user's own log; `aggregate_scaling`,
    the `AggregateScaling` of its training data, required for a model with use_aggregates).

    An `out` holding files is refused unless `overwrite`; everything is written into a sibling
    folder renamed into place at the end (the old export moved aside first, deleted last), so a
    crash never leaves a half-old, half-new export."""
    from genrank_jax.cli.output_folder import check_free, written_whole

    platforms = check_platforms(platforms)
    check_exportable(model)
    check_aggregate_scaling(model, aggregate_scaling)
    check_free(out, overwrite=overwrite)
    with written_whole(out, overwrite=overwrite) as folder:
        _write_export(model, folder, platforms, vocabulary, aggregate_scaling)
    return pathlib.Path(out)


# Elements of each parameter the fingerprint reads: the artifact computes it on every score call,
# and a pass over a catalog's tables would cost more than scoring (37 ms for a 2^20 x 64 table on
# CPU). Training moves nearly every value, so an evenly strided sample tells two exports apart.
FINGERPRINT_SAMPLES = 4096


def params_fingerprint(params) -> jnp.ndarray:
    """[P, 2] float32: the sum and the sum of absolute values of evenly strided rows (about
    FINGERPRINT_SAMPLES elements) of each parameter (cheap, computed in the artifact)."""
    def sums(p):
        if p.ndim:  # whole rows: a strided slice of the flattened array is a copy of it on CPU
            rows = max(1, FINGERPRINT_SAMPLES // max(1, p.size // max(1, p.shape[0])))
            p = p[::max(1, p.shape[0] // rows)]
        sample = p.astype(jnp.float32)
        return jnp.stack([jnp.sum(sample), jnp.sum(jnp.abs(sample))])

    return jnp.stack([sums(p) for p in params])


def _write_export(model, out: pathlib.Path, platforms, vocabulary, aggregate_scaling) -> None:
    config = model.config
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    tag = history_cache.model_tag(model)

    def merged(params):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, params))

    def encode_fn(params, history, num_candidates):
        cache = history_cache.encode_history(merged(params), history_cache.History(**history),
                                             num_candidates=num_candidates, tag=tag)
        return cache_to_dict(cache)

    # Parameters that are not this export's (another export's params.npz) give NaN logits: an
    # artifact cannot raise, and a plausible wrong score is worse than an obviously wrong one.
    own = np.asarray(params_fingerprint(leaves))

    def score_fn(params, cache, candidates):
        logits = history_cache.score(merged(params), cache_from_dict(cache, config.num_blocks),
                                     history_cache.Candidates(**candidates), impl="xla", tag=tag)
        mine = jnp.all(jnp.abs(params_fingerprint(params) - own) <= 1e-4 * (1.0 + jnp.abs(own)))
        return jnp.where(mine, logits, jnp.nan)

    history, candidates, cache = _abstract_inputs(config)
    params = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    b = history["lengths"].shape[0]
    counts = jax.ShapeDtypeStruct((b,), jnp.int32)
    exported_encode = jax.export.export(jax.jit(encode_fn), platforms=platforms)(params, history, counts)
    exported_score = jax.export.export(jax.jit(score_fn), platforms=platforms)(params, cache, candidates)
    (out / "encode.jaxexport").write_bytes(exported_encode.serialize())
    (out / "score.jaxexport").write_bytes(exported_score.serialize())
    np.savez(out / "params.npz", *[np.asarray(x) for x in leaves])
    params_sha256 = hashlib.sha256((out / "params.npz").read_bytes()).hexdigest()
    manifest = dict(
        format="genrank-jax scorer 1", platforms=list(platforms), num_params=len(leaves),
        encode=dict(inputs=["params", "history", "num_candidates"],
                    history=input_fields(history_cache.History, config),
                    num_candidates="[b] int32: the request's candidate count (used by HSTU blocks only)",
                    outputs=sorted(cache)),
        score=dict(inputs=["params", "cache", "candidates"], candidates=input_fields(history_cache.Candidates, config),
                   outputs="logits [b, m, A]"),
        symbolic_dims=dict(b="users", n="history tokens (= cache capacity)", m="candidate slots"),
        actions=list(config.features.action_names), config=json.loads(config.to_json()),
        model_tag=tag.tolist(), params_sha256=params_sha256)
    if vocabulary is not None:
        from genrank_jax.data.own_log.vocabulary import FILE_NAME

        vocabulary.save(out / FILE_NAME)
        manifest["vocabulary"] = dict(file=FILE_NAME, sha256=vocabulary.digest(),
                                      apply="genrank_jax.serving.export.load_vocabulary(folder)"
                                            ".items.lookup(raw_item_ids); .users.lookup(raw_user_ids)")
    if config.use_aggregates:  # a scaling given for a model without aggregate inputs is not shipped
        aggregate_scaling.save(out / SCALING_FILE)
        manifest["aggregates"] = dict(
            file=SCALING_FILE, sha256=hashlib.sha256((out / SCALING_FILE).read_bytes()).hexdigest(),
            columns=list(aggregate_scaling.names),
            apply="genrank_jax.serving.export.load_export(folder).aggregate_scaling.transform(counts, positives, "
                  "item_age_hours, hours_since_previous) -> the history's and candidates' aggregates")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _verified_vocabulary(path: pathlib.Path, digest: str, owner: str):
    from genrank_jax.data.own_log.vocabulary import Vocabulary

    if not path.is_file():
        raise GenRankError(f"{path} is missing: {owner} was trained on a user's own log and needs its vocabulary")
    vocabulary = Vocabulary.load(path)
    if vocabulary.digest() != digest:
        raise GenRankError(f"{path} is not the vocabulary {owner} was trained with (SHA-256 differs): "
                           "ids would map to other rows")
    return vocabulary


@dataclasses.dataclass(frozen=True)
class LoadedExport:
    """An export folder's functions and parameters, checked against its manifest."""

    encode: object  # jax.export.Exported: encode.call(params, history, num_candidates) -> cache
    score: object  # score.call(params, cache, candidates) -> logits [b, m, A]
    params: list
    manifest: dict
    vocabulary: object = None
    aggregate_scaling: object = None  # AggregateScaling of a model that reads aggregate features


def load_export(folder) -> LoadedExport:
    """Load an export, refusing a params.npz (or vocabulary.npz) that is not the export's own."""
    folder = pathlib.Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "params.npz").read_bytes()
    digest = manifest.get("params_sha256")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise GenRankError(f"{folder / 'params.npz'} is not this export's parameters (SHA-256 differs from "
                           "manifest.json's): params from another export would score silently wrong")
    with np.load(folder / "params.npz") as stored:
        params = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    load = lambda name: jax.export.deserialize(bytearray((folder / f"{name}.jaxexport").read_bytes()))
    return LoadedExport(encode=load("encode"), score=load("score"), params=params, manifest=manifest,
                        vocabulary=load_vocabulary(folder), aggregate_scaling=_verified_scaling(folder, manifest))


def _verified_scaling(folder: pathlib.Path, manifest: dict):
    entry = manifest.get("aggregates")
    if entry is None:
        return None
    path = folder / entry["file"]
    if not path.is_file():
        raise GenRankError(f"{path} is missing: the export's model reads aggregate features and needs its scaling")
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
        raise GenRankError(f"{path} is not the aggregate scaling this export was trained with (SHA-256 differs from "
                           "manifest.json's): its inputs would be scaled wrong")
    return AggregateScaling.load(path)


def load_checkpoint_aggregates(directory):
    """The `AggregateScaling` saved beside a run's checkpoints (a model that reads aggregate
    features); None when the folder has none."""
    path = pathlib.Path(directory) / SCALING_FILE
    if not path.is_file():
        return None
    try:
        return AggregateScaling.load(path)
    except ValueError as error:
        raise GenRankError(str(error)) from error


def load_vocabulary(folder):
    """The raw-id Vocabulary of an export folder (checked against its manifest); None if it has none."""
    folder = pathlib.Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest.get("vocabulary")
    if entry is None:
        return None
    return _verified_vocabulary(folder / entry["file"], entry["sha256"], f"the export {folder}")


def load_checkpoint_vocabulary(directory, step: int | None = None):
    """The Vocabulary saved beside a run's checkpoints (checked against the step's record); None
    for a run on another source."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    manager = ocp.CheckpointManager(directory)
    try:
        step = manager.latest_step() if step is None else step
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    digest = meta.get("settings", {}).get("data", {}).get("vocabulary")
    from genrank_jax.data.own_log.vocabulary import FILE_NAME

    return None if digest is None else _verified_vocabulary(directory / FILE_NAME, digest,
                                                            f"the checkpoint at step {step} in {directory}")


def load_checkpoint_model(directory, step: int | None = None):
    """(GenRank model, step) saved by `genrank-jax train` checkpoints in `directory` (latest step by default).

    The model config and training settings are read from the checkpoint itself; the arrays are
    restored through `Checkpoints.restore` (checksums and finiteness verified).
    """
    import orbax.checkpoint as ocp

    from genrank_jax.model.config import GenRankConfig
    from genrank_jax.model.genrank import GenRank
    from genrank_jax.training.checkpoint import CheckpointError, Checkpoints, abstract_like
    from genrank_jax.training.trainer import TrainConfig, make_optimizer

    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint folder {directory}")
    manager = ocp.CheckpointManager(directory)
    try:
        saved = sorted(manager.all_steps())
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}")
        if step not in saved:
            raise CheckpointError(f"no checkpoint at step {step} in {directory}; its saved steps are {saved}")
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            config = GenRankConfig.from_json(json.dumps(meta["config"]))
            train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
            train = TrainConfig(**{k: v for k, v in meta.get("settings", {}).get("train", {}).items()
                                   if k in train_fields})
        except CheckpointError:
            raise
        except Exception as error:  # orbax raises many types for unreadable files
            raise CheckpointError(f"checkpoint at step {step} in {directory} is corrupt or unreadable (metadata): "
                                  f"{type(error).__name__}: {error}") from error
    finally:
        manager.close()
    if config.architecture != "genrank":
        raise CheckpointError(f"the checkpoint in {directory} holds a {config.architecture!r} model, not GenRank")
    model = GenRank(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_optimizer(train), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    pure = nnx.to_pure_dict(state)
    checkpoints = Checkpoints(directory, config_json=config.to_json(), keep=None, settings=meta.get("settings"))
    try:
        restored, _ = checkpoints.restore(abstract_like(pure), step)
    finally:
        checkpoints.close()
    nnx.replace_by_pure_dict(state, restored)
    model, _ = nnx.merge(graphdef, state)
    return model, step


__all__ = [
    "export_scorer", "load_export", "LoadedExport", "params_fingerprint", "load_checkpoint_model",
    "load_checkpoint_vocabulary", "load_vocabulary", "load_checkpoint_aggregates", "check_aggregate_scaling",
    "input_fields", "cache_to_dict", "cache_from_dict", "PLATFORMS",
]
