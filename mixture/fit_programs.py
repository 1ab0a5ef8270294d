"""The fit's programs: the jitted SVI pieces of one configuration, and `FitPrograms`, which
builds them once, counts them and keeps them in a program cache.

A program is one jitted function of the fit (`Program`): scoring random candidates, computing
losses, initialising SVI states, running a chunk of steps, reading the winner out. Each step is
SVI's, with TraceEnum_ELBO's loss and gradient summed over blocks of points (`point_block`), and
either Adam's update or an EM-preconditioned one (`mixture.precondition`), chosen by the state,
so that cold fits and warm refits share one program.

Initialisation follows the tutorial (uniform weights, scale sqrt(var/2), locs drawn from the
data, or by k-means++ seeding) and evaluates all candidates in one vmapped, jitted pass of the
model's loss (its priors from the model, its likelihood in closed form: `ranking_losses`).
`FitPrograms` holds the built programs per static configuration (a refit of the same window
size never recompiles), the count of programs traced (a trainer metric) and, optionally, the
disk cache of traced programs (`mixture.program_cache`) for later processes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixture.covariance import is_cholesky
from mixture.covariance_forms import FORMS
from mixture.fit_config import FitConfig
from mixture.fit_data import MIN_BLOCK, fit_covariance, point_block
from mixture.params import Priors, seed_priors
from mixture.program_cache import ProgramCache, source_salt
from mixture.sites import global_sites

if TYPE_CHECKING:
    import optax
    from jax.sharding import Mesh
    from numpyro.infer import SVI
    from numpyro.infer.autoguide import AutoDelta

# NumPyro, optax and the model are imported where the programs are built (build_program): a
# process that loads them from the program cache never needs them, and importing them is a
# good part of a short CLI fit's time.

#: The modules whose code shapes the fit's programs (their source salts the program cache).
PROGRAM_SOURCES = (
    "mixture.fit_programs",
    "mixture.fit_config",
    "mixture.fit_data",
    "mixture.fit_hosts",
    "mixture.process_group",
    "mixture.model",
    "mixture.sites",
    "mixture.precondition",
    "mixture.params",
    "mixture.covariance",
    "mixture.covariance_forms",
)

#: The FitConfig fields the programs are built from (`build_program` reads no others; a test
#: checks): configurations that differ only in the driver's fields (tolerances, step caps, how
#: many candidates are optimised, how many points rank them) share their programs.
PROGRAM_FIELDS = (
    "n_components",
    "covariance",
    "reg_covar",
    "init",
    "n_init",
    "kmeans_steps",
    "learning_rate",
    "b1",
    "b2",
    "lr_half_life_steps",
)


def program_config(config: FitConfig) -> FitConfig:
    """The configuration the programs of `config` are built and cached under: its
    PROGRAM_FIELDS, every other field at its default."""
    return FitConfig(**{name: getattr(config, name) for name in PROGRAM_FIELDS})


#: The mesh axis the window's points are sharded along (FitPrograms(mesh=...)).
POINTS_AXIS = "points"

#: Programs of at most this many configurations are kept built in a process.
MAX_BUILT = 32


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """XLA options for the fit's programs (first called when a program is built or loaded: it
    starts JAX's backend). On CPU, XLA's YNNPACK library fusions are turned off:
    they ran the fit's reductions over the points (the gradient's sums) several times slower
    than XLA's own loops (measured: a D=1 cold step 16 ms -> 5 ms, D=8 full 79 -> 66 ms, at
    131,072 points and 10 candidates; bench/results/fit.md). Other backends, and a jaxlib
    without the option, compile with the defaults."""
    if jax.default_backend() != "cpu":
        return None
    options = {"xla_cpu_experimental_ynn_fusion_type": ""}
    try:
        jax.jit(lambda v: v + 1, compiler_options=options)(jnp.zeros(()))
    except Exception:  # an XLA without the option refuses it by name
        return None
    return options


class FitPrograms:
    """The fit's programs of every configuration a process uses, built once each.

    One per process by default (`mixture.fit.default_programs()`, which the trainer and the CLIs
    use); `fit_map(programs=...)` takes another (tests build fresh ones). It counts the programs
    traced or loaded (`compilations`) and, after
    `use_cache(directory)`, keeps traced programs on disk so that a new process loads them
    instead of tracing NumPyro's model again (most of a small fit's time from a new process).
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str] | None = None, mesh: Mesh | None = None
    ) -> None:
        """mesh: devices (`point_mesh`) over which the window's points are sharded, each
        step's sums taken on every device at once and added up; None: one device."""
        self.compilations = 0
        self.cache: ProgramCache | None = None
        self._built: OrderedDict[tuple[FitConfig, int], Program] = OrderedDict()
        self.mesh: Mesh | None = None
        self.use_mesh(mesh)
        self.use_cache(cache_dir)

    def use_mesh(self, mesh: Mesh | None) -> None:
        """Shards later fits over `mesh` (None, or a mesh of one device: no sharding); the
        programs built for another mesh are let go."""
        mesh = mesh if mesh is not None and mesh.size > 1 else None
        if mesh != self.mesh:
            self._built.clear()
        self.mesh = mesh

    def use_cache(self, directory: str | os.PathLike[str] | None) -> None:
        """Keeps traced programs under `directory` (None: each process traces its own). An
        unusable directory (warned about once) leaves tracing as it was: exporting programs no
        later process could read would only cost time. Safe to delete at any time."""
        if directory is None:
            self.cache = None
            return
        cache = ProgramCache(directory, source_salt(*PROGRAM_SOURCES), compiler_options)
        cache.prune()  # earlier code's programs are never loaded again
        self.cache = cache if cache.persistent else None

    def program(self, config: FitConfig, dim: int) -> Program:
        """The programs of one configuration and dimension, built on first use."""
        config = program_config(config)
        key = (config, dim)
        program = self._built.get(key)
        if program is None:
            program = self._built[key] = build_program(config, dim, self._count, self.mesh)
            while len(self._built) > MAX_BUILT:
                self._built.popitem(last=False)
        self._built.move_to_end(key)
        return program

    def run(self, config: FitConfig, dim: int, name: str, *args: Any, **static: Any) -> Any:
        """Runs the program `name` of (config, dim) on args, through the program cache when one
        is in use (then the programs are built only if this one is not on disk)."""
        cache = self.cache
        if cache is None or self.mesh is not None:  # sharded programs are traced in-process
            return getattr(self.program(config, dim), name)(*args, **static)
        config = program_config(config)
        digest = hashlib.sha256(f"{config!r}|{dim}".encode()).hexdigest()[:16]
        label = f"fit.{name}.{digest}"
        fresh = cache.key(label, args, static) not in cache
        before = self.compilations
        result = cache.call(label, lambda: getattr(self.program(config, dim), name), args, static)
        if fresh and self.compilations == before:  # loaded rather than traced: still compiled
            self._count()
        return result

    def _count(self) -> None:
        # Runs only while tracing: exactly one increment per compiled program.
        self.compilations += 1


class Program(NamedTuple):
    """The jitted pieces of one fit configuration (`build_program`)."""

    svi: SVI
    sites: tuple[str, ...]
    candidates: Callable[..., Any]
    #: losses(values, points, priors, mask): the loss of each of a batch of site values.
    losses: Callable[..., Any]
    init_states: Callable[..., Any]
    run_chunk: Callable[..., Any]
    winner: Callable[..., Any]


class _StepState(NamedTuple):
    adam: Any
    count: Any
    # State, not constants, so that cold fits and warm refits share one program:
    lr0: Any  # Adam's starting step size
    em: Any  # True: EM-preconditioned steps instead of Adam's (mixture.precondition)
    n_points: Any  # the points the loss sums over (the EM step's N)
    n_observed: Any  # (D,) how many of them observe each coordinate
    norms: dict[str, Any]


def _optimizer(config: FitConfig, covariance: str) -> optax.GradientTransformation:
    """Adam whose step size starts at the state's lr0 and halves every lr_half_life_steps
    (down to 1e-3 of lr0), or, when the state's em flag is set, EM-preconditioned steps;
    either way recording each parameter's gradient norm for the reports."""
    import optax

    from mixture.precondition import em_update

    adam = optax.scale_by_adam(config.b1, config.b2)

    def init(params: Any) -> _StepState:
        return _StepState(
            adam.init(params),
            jnp.zeros((), jnp.int32),
            jnp.asarray(config.learning_rate, jnp.float32),
            jnp.zeros((), bool),
            jnp.ones((), jnp.float32),
            jnp.ones(params["locs_auto_loc"].shape[-1:], jnp.float32),
            {name: jnp.zeros(()) for name in params},
        )

    def update(grads: Any, state: _StepState, params: Any = None) -> Any:
        norms = {name: jnp.linalg.norm(g) for name, g in grads.items()}
        updates, adam_state = adam.update(grads, state.adam, params)
        decay = jnp.maximum(0.5 ** (state.count / config.lr_half_life_steps), 1e-3)
        step = -state.lr0 * decay
        updates = jax.tree.map(lambda u: step * u, updates)
        em = em_update(
            params,
            grads,
            covariance,
            config.n_components,
            config.reg_covar,
            state.n_points,
            state.n_observed,
        )
        updates = {
            name: jnp.where(state.em, em[name] - params[name], u) for name, u in updates.items()
        }
        next_state = state._replace(adam=adam_state, count=state.count + 1, norms=norms)
        return updates, next_state

    return optax.GradientTransformation(init, update)


def build_program(
    config: FitConfig, dim: int, count: Callable[[], None], mesh: Mesh | None = None
) -> Program:
    """The jitted pieces of a fit for one static configuration and dimension (each compiled
    once per padded window size and number of candidates optimised); `count` is called once
    per program traced (inside the trace). mesh: the devices the points are sharded over."""
    from numpyro import handlers
    from numpyro.infer import SVI, TraceEnum_ELBO
    from numpyro.infer.autoguide import AutoDelta
    from numpyro.infer.util import log_density

    from mixture.model import StandardisedCholeskyNormal, likelihood_scale, make_mixture_model

    jit = functools.partial(jax.jit, compiler_options=compiler_options())
    k = config.n_components
    covariance = fit_covariance(config.covariance, dim)
    model = make_mixture_model(k, covariance, config.reg_covar)
    sites = global_sites(covariance, k)
    # As in the tutorial: the guide sees only the globals; the seed handler feeds the local
    # sample sites the guide's prototype run passes through.
    global_model = handlers.block(
        handlers.seed(model, jax.random.PRNGKey(0)),
        hide_fn=lambda site: site.get("name") not in (*sites, "components"),
    )
    guide = AutoDelta(global_model)
    elbo = TraceEnum_ELBO()
    svi = SVI(model, guide, _optimizer(config, covariance), loss=elbo)

    state_def = _setup_prototype(svi, guide, k, dim)
    # The model's globals alone: the data's sites hidden (the seed draws the hidden assignment).
    priors_only = handlers.seed(handlers.block(model, hide=["assignment", "obs"]), rng_seed=0)

    def guide_values(values: dict[str, Any]) -> dict[str, Any]:
        return {f"{name}_auto_loc": values[name] for name in sites}

    def loss_of(values: dict[str, Any], points: Any, priors: Priors, mask: Any) -> Any:
        return elbo.loss(
            jax.random.PRNGKey(0), guide_values(values), model, guide, points, priors, mask
        )

    def candidate_losses(values: Any, points: Any, priors: Priors, mask: Any) -> Any:
        """The loss of each of a batch of site values, summed over blocks of points (all the
        candidates' intermediates for a whole window at once would go through memory)."""
        count = jax.tree.leaves(values)[0].shape[0]

        def of_block(shared: Any, pts: Any, msk: Any) -> Any:
            values, priors = shared
            return jax.vmap(lambda v: loss_of(v, pts, priors, msk))(values)

        return sum_over_points(of_block, (values, priors), points, mask, mesh, count * k * dim)

    def ranking_losses(values: Any, points: Any, priors: Priors, mask: Any) -> Any:
        """candidate_losses' values (to float32 rounding), the likelihood in closed form: the
        priors' terms are the model's own (its log density with the data's sites blocked), the
        points' terms log sum_k w_k N(x | k) by the covariance form's density.
        TraceEnum_ELBO's enumerated loss compiles to one loop fusion that ran ~10 ns per point
        and component; ranking the warm start against 100 random candidates on 1,024 points
        was most of a warm refit's fixed cost. The steps still take the model's own loss.
        (The ELBO also counts log sum_k w_k once per masked row: 0 for weights on the simplex,
        up to ~1e-4 per padding row for a warm start whose weights sum to 1 within 1e-4.)"""
        count = jax.tree.leaves(values)[0].shape[0]
        nothing = jnp.zeros_like(mask[:1])
        prior_terms = jax.vmap(
            lambda v: -log_density(priors_only, (points[:1], priors, nothing), {}, v)[0]
        )(values)

        def of_block(values: Any, pts: Any, msk: Any) -> Any:
            return jax.vmap(lambda v: -mixture_log_likelihood(v, pts, msk))(values)

        return prior_terms + sum_over_points(of_block, values, points, mask, mesh, count * k * dim)

    def mixture_log_likelihood(values: dict[str, Any], points: Any, mask: Any) -> Any:
        """sum over the counted points of log p(x) under one candidate's site values: what the
        model's likelihood adds to its loss (over the observed coordinates of a 2-D mask)."""
        scale = likelihood_scale(values, covariance, config.reg_covar, k, dim)
        locs = values["locs"]
        rows = mask if mask.ndim == 1 else mask.any(-1)
        if is_cholesky(covariance):  # the model's own density: one product for every point
            tril = scale if scale.ndim == 2 else scale[:, None]  # tied: one factor for all
            component = StandardisedCholeskyNormal(locs[:, None], scale_tril=tril)
            per_component = component.log_prob(points)  # (K, B)
        elif mask.ndim == 2:  # the observed coordinates only
            residuals = points[None] - locs[:, None]  # (K, B, D)
            per_component = FORMS[covariance].marginal_log_density(residuals, mask, scale)
        else:
            per_component = FORMS[covariance].log_density(points[None] - locs[:, None], scale)
        log_weights = jnp.log(values["weights"]) if k > 1 else jnp.zeros(1, points.dtype)
        per_point = jax.nn.logsumexp(log_weights[:, None] + per_component, axis=0)
        return jnp.where(rows, per_point, 0.0).sum()

    @jit
    def candidates(
        key: Any,
        points: Any,
        n_valid: Any,
        priors: Priors,
        mask: Any,
        warm: Any,
        use_warm: Any,
        refine: Any,
    ) -> Any:
        """n_init candidates (warm start in slot 0 when use_warm) and their initial losses;
        with `refine`, their locations are moved by config.kmeans_steps of Lloyd's k-means."""
        count()
        values = initial_candidates(key, points, n_valid, config.n_init, k, covariance, config.init)
        if config.init == "kmeans++" and config.kmeans_steps > 0:
            valid = jnp.arange(points.shape[0]) < n_valid
            values["locs"] = jax.lax.cond(
                refine,
                lambda locs: jax.vmap(lambda one: lloyd(one, points, valid, config.kmeans_steps))(
                    locs
                ),
                lambda locs: locs,
                values["locs"],
            )
        values = {
            name: v.at[0].set(jnp.where(use_warm, warm[name].astype(v.dtype), v[0]))
            for name, v in values.items()
        }
        losses = ranking_losses(values, points, priors, mask)
        return values, jnp.where(jnp.isfinite(losses), losses, jnp.inf)

    @jit
    def losses(values: Any, points: Any, priors: Priors, mask: Any) -> Any:
        count()
        return candidate_losses(values, points, priors, mask)

    @jit
    def init_states(
        key: Any,
        values: Any,
        chosen: Any,
        lr0: Any,
        em: Any,
        n_points: Any,
        n_observed: Any,
        points: Any,
        priors: Priors,
        mask: Any,
    ) -> Any:
        count()
        starts = jax.tree.map(lambda v: v[chosen], values)
        keys = jax.random.split(key, chosen.shape[0])

        # The state depends on the data only through shapes the globals do not have: a first
        # slice of points traces the model (the whole window made SVI's init hold every
        # point's terms at once: 1.6 GB at 1M points of D=8).
        rows = min(points.shape[0], MIN_BLOCK)
        head, head_mask = points[:rows], mask[:rows]

        def one(key: Any, start: Any) -> Any:
            state = svi.init(key, head, priors, head_mask, init_params=guide_values(start))
            i, (params, opt) = state.optim_state
            opt = opt._replace(lr0=lr0, em=em, n_points=n_points, n_observed=n_observed)
            return state._replace(optim_state=(i, (params, opt)))

        return jax.tree.leaves(jax.vmap(one)(keys, starts))

    def point_loss(params: Any, points: Any, priors: Priors, mask: Any) -> Any:
        return elbo.loss(
            jax.random.PRNGKey(0), svi.constrain_fn(params), model, guide, points, priors, mask
        )

    def chunked_update(state: Any, points: Any, priors: Priors, mask: Any) -> Any:
        """svi.update's step, its loss and gradient summed over blocks of POINT_BLOCK points
        (lax.scan): the loss is a sum over points plus the priors' terms, so the sum of the
        blocks' losses less the priors' terms counted once per extra block is the same loss.
        A block's intermediates (candidates x block x K) stay in cache, where the whole
        window's went through memory on every step."""
        params = svi.optim.get_params(state.optim_state)
        value_and_grad = jax.value_and_grad(point_loss)
        loss, grads = sum_over_points(
            lambda shared, pts, msk: value_and_grad(*shared, pts, priors, msk),
            (params,),
            points,
            mask,
            mesh,
        )
        optim_state = svi.optim.update(grads, state.optim_state, value=loss)
        return state._replace(optim_state=optim_state), loss

    # The states cross the programs' boundaries as their leaves: a loaded program's inputs and
    # outputs then hold no NumPyro or optax types, which deserialising would need imported.
    @functools.partial(jit, static_argnames="length")
    def run_chunk(leaves: Any, points: Any, priors: Priors, mask: Any, length: int) -> Any:
        count()
        states = jax.tree.unflatten(state_def, leaves)

        def step(s: Any, _: Any) -> Any:
            s, loss = chunked_update(s, points, priors, mask)
            return s, (loss, s.optim_state[1][1].norms)

        def chunk(state: Any) -> Any:
            return jax.lax.scan(step, state, None, length=length)

        states, out = jax.vmap(chunk)(states)
        return jax.tree.leaves(states), out

    @jit
    def winner(leaves: Any, win: Any) -> Any:
        """The winning candidate's fitted site values (constrained)."""
        count()
        states = jax.tree.unflatten(state_def, leaves)
        fitted = svi.get_params(jax.tree.map(lambda v: v[win], states))
        return {name: fitted[f"{name}_auto_loc"] for name in sites}

    return Program(svi, sites, candidates, losses, init_states, run_chunk, winner)


def _setup_prototype(svi: SVI, guide: AutoDelta, k: int, dim: int) -> Any:
    """Sets the guide's prototype (the model's structure) up once, on dummy data.

    Run eagerly, that setup dispatches over a thousand small operations, each compiled on its
    own (most of a cold fit's time). Traced abstractly instead (`eval_shape`: nothing is
    compiled), it records the same structure; the only values the guide keeps from it, its
    initial locations, are replaced by concrete zeros of the same shapes (every fit passes its
    own starting values). Returns the SVI state's tree structure (the programs pass states as
    leaves).
    """
    state = jax.eval_shape(
        lambda p: svi.init(jax.random.PRNGKey(0), jnp.zeros((k, dim)), p), seed_priors(dim)
    )
    guide._init_locs = {
        name: jnp.zeros(np.shape(v), v.dtype) for name, v in guide._init_locs.items()
    }
    for site in guide.prototype_trace.values():
        if "value" in site and hasattr(site["value"], "aval"):
            site["value"] = jnp.zeros(np.shape(site["value"]), site["value"].dtype)
    return jax.tree.structure(state)


def initial_candidates(
    key: Any,
    points_z: Any,
    n_valid: Any,
    n_candidates: int,
    n_components: int,
    covariance: str,
    init: str = "random",
) -> dict[str, Any]:
    """n_candidates starts at once, as site values: uniform weights, locs drawn from the first
    n_valid points (the rest is padding) of points_z (N, D), uniformly with replacement (the
    tutorial's "random") or by k-means++ seeding ("kmeans++"), and the covariance type's
    initial scales (`CovarianceForm.initial_scale`: sqrt(var/2), identity correlations). Each
    value has a leading axis of n_candidates."""
    d = points_z.shape[1]
    c, k = n_candidates, n_components
    if init == "kmeans++":
        keys = jax.random.split(key, c)
        locs = jax.vmap(lambda one: kmeans_plus_plus(one, points_z, n_valid, k))(keys)
    else:
        locs = points_z[jax.random.randint(key, (c, k), 0, n_valid)]
    return {
        "weights": jnp.full((c, k), 1.0 / k, points_z.dtype),
        "locs": locs,
        **FORMS[covariance].initial_scale(c, k, d, points_z.dtype),
    }


def point_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh (POINTS_AXIS) over `devices` (default: every device of every process,
    `jax.devices()`), for FitPrograms(mesh=...)."""
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (POINTS_AXIS,))


def sum_over_points(
    of_block: Callable[[Any, Any, Any], Any],
    shared: Any,
    points: Any,
    mask: Any,
    mesh: Mesh | None,
    width: int = 1,
) -> Any:
    """of_block(shared, points, mask) summed over every point (see sum_over_blocks; `width`:
    values per point, which sizes the blocks); `shared` holds the values every block uses (the
    parameters), passed explicitly. Over a mesh, each device sums its shard of the points in
    blocks and the shards' sums are added up (psum): each counted the priors' terms once, so
    all but one count are taken off again."""

    def local(shared: Any, pts: Any, msk: Any) -> Any:
        return sum_over_blocks(
            lambda p, m: of_block(shared, p, m), pts, msk, point_block(pts.shape[0], width)
        )

    if mesh is None or points.shape[0] % mesh.size:  # e.g. a replicated scoring sample
        return local(shared, points, mask)
    from jax.sharding import PartitionSpec

    def on_shard(shared: Any, pts: Any, msk: Any) -> Any:
        return jax.lax.psum(local(shared, pts, msk), POINTS_AXIS)

    # check_vma off: the gradient of a replicated input (the parameters) is then taken per
    # shard, as these sums need, instead of summed over the devices by JAX on its own.
    by_shard = PartitionSpec(POINTS_AXIS)
    total = jax.shard_map(
        on_shard,
        mesh=mesh,
        in_specs=(PartitionSpec(), by_shard, by_shard),
        out_specs=PartitionSpec(),
        check_vma=False,
    )(shared, points, mask)
    empty = of_block(shared, points[:1], jnp.zeros_like(mask[:1]))
    return jax.tree.map(lambda t, e: t - (mesh.size - 1) * e, total, empty)


def sum_over_blocks(of_block: Callable[[Any, Any], Any], points: Any, mask: Any, size: int) -> Any:
    """of_block(points, mask) summed over consecutive blocks of `size` rows (lax.scan), for a
    loss (or its value and gradient) that is a sum over points plus the priors' terms: an
    all-masked block's result is the priors' terms alone, so it is taken off once per extra
    block and they count once, as over the whole window."""
    blocks = points.shape[0] // size
    if blocks == 1:
        return of_block(points, mask)
    empty = of_block(points[:size], jnp.zeros_like(mask[:size]))
    start = jax.tree.map(lambda v: -(blocks - 1) * v, empty)

    def add_block(total: Any, block: Any) -> Any:
        return jax.tree.map(jnp.add, total, of_block(*block)), None

    def by_block(v: Any) -> Any:
        return v.reshape(blocks, size, *v.shape[1:])

    return jax.lax.scan(add_block, start, (by_block(points), by_block(mask)))[0]


def lloyd(locs: Any, points: Any, valid: Any, steps: int) -> Any:
    """`steps` of Lloyd's k-means from (K, D) locations over the valid rows of points (N, D):
    each point to its nearest location, each location to the mean of its points (one with no
    points stays). As scikit-learn starts EM from k-means, so EM starts near an optimum
    instead of crawling from a saddle (two locations on one cluster)."""
    k = locs.shape[0]
    sq = (points * points).sum(-1)[:, None]

    def step(_: Any, locs: Any) -> Any:
        d2 = sq - 2.0 * _exact_dot(points, locs.T) + (locs * locs).sum(-1)[None, :]
        nearest = jnp.argmin(d2, axis=-1)
        member = ((nearest[:, None] == jnp.arange(k)[None, :]) & valid[:, None]).astype(
            points.dtype
        )
        counts = member.sum(0)
        means = (member.T @ points) / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, means, locs)

    return jax.lax.fori_loop(0, steps, step, locs)


def kmeans_plus_plus(key: Any, points: Any, n_valid: Any, n_components: int) -> Any:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007): (K, D) locations, the first drawn
    uniformly from the first n_valid points, each next one with probability proportional to
    its squared distance to the nearest location drawn so far. Points at zero distance (all
    drawn already, or repeated values) fall back to uniform draws."""
    n = points.shape[0]
    valid = jnp.arange(n) < n_valid
    sq = (points * points).sum(-1)
    first_key, key = jax.random.split(key)
    first = points[jax.random.randint(first_key, (), 0, n_valid)]
    locs = jnp.zeros((n_components, points.shape[1]), points.dtype).at[0].set(first)
    # Draws by inverse CDF in two levels: a block of `width` points by the blocks' cumulative
    # weights, then a point by the block's own. XLA's CPU cumsum is a reduce-window as wide as
    # its input (N additions per point): two of about sqrt(N) cost a fraction of one of N.
    width = min(n & -n, 1 << (n.bit_length() // 2))

    def nearest(loc: Any) -> Any:
        # One matrix-vector product, not a (candidates, N, D) difference under vmap (seeding
        # 100 candidates of K=4 in D=8 took 3.3 ms that way, 0.6 this way). The points are
        # standardised, so the expansion's cancellation stays small against the distances.
        d2 = sq - 2.0 * _exact_dot(points, loc) + _exact_dot(loc, loc)
        return jnp.where(valid, jnp.maximum(d2, 0.0), 0.0)

    def draw(j: Any, carry: Any) -> Any:
        locs, d2, key = carry
        key, sub = jax.random.split(key)
        weights = jnp.where(d2.sum() > 0, d2, valid.astype(d2.dtype)).reshape(-1, width)
        totals = weights.sum(axis=1)
        cumulative = jnp.cumsum(totals)
        u = jax.random.uniform(sub, dtype=cumulative.dtype) * cumulative[-1]
        # How many cumulative weights are <= u: the index searchsorted(side="right") gives,
        # as one comparison (a binary search compiles to a loop of its own).
        block = jnp.minimum(jnp.sum(cumulative <= u), totals.shape[0] - 1)
        # Rounding can put u a hair before the block's start: clamped, the draw skips the
        # block's leading zero weights instead of taking its first point.
        rest = jnp.maximum(u - (cumulative[block] - totals[block]), 0.0)
        within = jnp.cumsum(weights[block]) <= rest
        pick = jnp.minimum(block * width + jnp.minimum(jnp.sum(within), width - 1), n_valid - 1)
        loc = points[pick]
        return locs.at[j].set(loc), jnp.minimum(d2, nearest(loc)), key

    locs, _, _ = jax.lax.fori_loop(1, n_components, draw, (locs, nearest(first), key))
    return locs


def _exact_dot(a: Any, b: Any) -> Any:
    """a @ b in full float32: a GPU may otherwise take float32 products at TF32's precision
    (about 1e-3), noise as large as the distances within a cluster. CPUs compute it so anyway."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
