"""The embedded default dataset: a feed simulator whose true action probabilities are known.

A user opens the app in sessions (a few requests minutes apart; hours to days between sessions,
log-normal, with a day/night rhythm). Each request shows K items picked by a stand-in production
recommender (a noisy, stale estimate of the user's taste plus popularity; not random, not perfect),
and the user acts on them:

  click logit = bias + affinity_weight * <u_t, v_i> + popularity_weight * pop_i
                + activity_weight * act_u - position_bias * log1p(k) - freshness_weight * age_i

where u_t = u + drift * (t / horizon) * d_u + history_weight * h_t: the user's taste drifts slowly
towards a personal direction d_u, and h_t is an exponentially decayed mean of the factors of items
the user recently clicked (so history carries signal a sequence model can read). Like, collect and
share happen only after a click, with their own conditional probabilities; the dataset stores the
unconditional marginals P(click) * P(action | click) as `oracle_probabilities` [E, A].

Feed phenomena, each with a strength (0 = off; the `feed` preset turns all of them on):

  pop_i -> pop_i + trend_strength * b_i(t)   trending: a fraction `trending_fraction` of items has
                                       a peak time; b_i(t) = exp(-(t - peak_i)/trend_decay_days)
                                       after it, exp(-(peak_i - t)/trend_rise_days) before; it moves
                                       the recommender's popularity term and the truth's alike
  + repeat_strength * [i clicked by u before]   repeat consumption: the recommender also offers the
                                       user's recent clicks (a quarter of the pool)
  - fatigue * log1p(n_c)               session context: n_c = exposures of the item's category
                                       earlier in the same session (a gap over 30 min starts one)
  items released over time             cold start: `new_item_fraction` of items is released at a
                                       uniform time over the horizon and never shown before it;
                                       age_i counts days since release (else the static age bucket)
  action-conditioned dynamics          the interest state moves towards liked items with
                                       1 + action_dynamics times the pull of a click, and away from
                                       skipped ones (shown, not clicked) with action_dynamics / 4:
                                       what the user did, not only what was shown, drives what next
  interest drift                       `drift` (above)

Every phenomenon is in the oracle probabilities, so the oracle AUC stays exact. Their random draws
come from a second generator, so with every strength at 0 a feed is the one the older code made.

Most of the click signal is user-item affinity and item popularity, which a ranker can learn from
ids and history; the content embedding of an item is a fixed random projection of its factors plus
noise (`content_noise`), a stand-in for MLLM representations of varying quality.

Splits are temporal: requests before the cutoff time (the first `1 - eval_fraction` of the time
span) are train, the rest eval. Every request is a sample; a user's first request simply has an
empty history, and eval samples see all of the user's earlier exposures, train ones included.

Everything is vectorized numpy; the only Python loop runs over a user's request slots (tens),
because each request's exposures and actions depend on the clicks of the user's previous ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genrank_jax import metrics
from genrank_jax.data.schema import FeatureSpec, Interactions, ItemCatalog, RankingDataset

ACTION_NAMES = ("click", "like", "collect", "share")
SIDE_FEATURE_NAMES = ("category", "age_bucket")
_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Sizes, timing, recommender and ground-truth parameters of the simulated feed.

    Weights are in logit units; affinities <u, v> have unit standard deviation over random pairs.
    """

    # The defaults are the CLI's default feed: few latent dimensions and many exposures per user
    # and item, so a small model trained for a couple of minutes on a CPU can approach the oracle.
    num_users: int = 1000
    num_items: int = 500
    latent_dim: int = 4
    requests_per_user: tuple[int, int] = (20, 60)  # inclusive range; more active users get more
    exposures_per_request: int = 8  # K
    content_dim: int = 32
    content_noise: float = 0.5  # noise std relative to the signal's: 0 = perfectly aligned
    eval_fraction: float = 0.2  # the last 20% of the time span is eval
    seed: int = 0
    # item side features
    num_categories: int = 16
    num_age_buckets: int = 8
    popularity_std: float = 1.0  # std of the item popularity logit pop_i
    # time
    epoch_seconds: float = 1.7e9
    horizon_days: float = 14.0
    requests_per_session: float = 3.0  # mean (geometric)
    within_session_gap_s: float = 90.0  # mean seconds between requests of one session (exponential)
    session_gap_median_h: float = 10.0  # log-normal gap between sessions
    session_gap_sigma: float = 1.0
    # the production recommender that picks exposures
    pool_factor: int = 6  # candidates scored per exposure slot (half popular, half uniform)
    recommender_affinity: float = 1.0  # weight of its (stale) affinity estimate
    recommender_popularity: float = 0.7
    recommender_noise: float = 1.0  # Gumbel noise scale: its imperfection / exploration
    # ground truth
    click_bias: float = -2.1
    affinity_weight: float = 0.8
    popularity_weight: float = 0.45
    activity_weight: float = 0.3
    position_bias: float = 0.2  # per log1p(position)
    freshness_weight: float = 0.04  # per age bucket
    drift: float = 0.6  # taste drift over the whole horizon
    history_weight: float = 0.8  # weight of the recent-clicks interest state
    history_decay: float = 0.7  # per request with clicks
    # conditional on click: (bias, affinity weight, popularity weight) per deeper action
    # feed phenomena (0 = off; see the module docstring)
    action_dynamics: float = 0.0
    fatigue: float = 0.0
    repeat_strength: float = 0.0
    new_item_fraction: float = 0.0
    trend_strength: float = 0.0
    trending_fraction: float = 0.1
    trend_rise_days: float = 1.0
    trend_decay_days: float = 2.0
    like_given_click: tuple[float, float, float] = (-2.3, 0.6, 0.2)
    collect_given_click: tuple[float, float, float] = (-3.4, 0.5, 0.3)
    share_given_click: tuple[float, float, float] = (-4.8, 0.4, 0.5)

    def __post_init__(self):
        low, high = self.requests_per_user
        if not 1 <= low <= high:
            raise ValueError(f"requests_per_user must be 1 <= low <= high, got {self.requests_per_user}")
        if self.num_users <= 0 or self.num_items <= 0 or self.latent_dim <= 0:
            raise ValueError(f"sizes must be positive, got {self.num_users=}, {self.num_items=}, {self.latent_dim=}")
        if not 1 <= self.exposures_per_request <= self.num_items:
            raise ValueError(f"exposures_per_request must be in [1, {self.num_items}], "
                             f"got {self.exposures_per_request}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.content_noise < 0 or self.content_dim < 0:
            raise ValueError(f"need content_noise >= 0 and content_dim >= 0, "
                             f"got {self.content_noise}, {self.content_dim}")
        if self.pool_factor < 1:
            raise ValueError(f"pool_factor must be >= 1, got {self.pool_factor}")
        for name in ("action_dynamics", "fatigue", "repeat_strength", "trend_strength", "drift"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is a strength and must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.new_item_fraction < 1.0 or not 0.0 <= self.trending_fraction <= 1.0:
            raise ValueError(f"need 0 <= new_item_fraction < 1 and 0 <= trending_fraction <= 1, got "
                             f"{self.new_item_fraction}, {self.trending_fraction}")
        if self.trend_rise_days <= 0 or self.trend_decay_days <= 0:
            raise ValueError("trend_rise_days and trend_decay_days must be positive")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SimulatorConfig":
        """Named sizes: "tests" (~30k exposures, well under 1 s), "default" (the CLI default,
        ~300k exposures), "feed" (the default's size with every feed phenomenon at its default
        strength: action-conditioned dynamics, session fatigue, repeat consumption, items released
        over time, trends, drift), "benchmark" (~6M exposures), "catalog" (a real catalog's shape: 10^6
        items, 2 * 10^5 users, 5M exposures, few per user and item; LIS at scale). `overrides`
        replace single fields."""
        presets = {
            "tests": dict(num_users=300, num_items=400, requests_per_user=(5, 20)),
            "default": {},
            "feed": dict(action_dynamics=1.0, fatigue=0.3, repeat_strength=1.0, new_item_fraction=0.3,
                         trend_strength=1.5, horizon_days=21.0),
            "benchmark": dict(num_users=25_000, num_items=20_000, latent_dim=16, requests_per_user=(10, 50),
                              num_categories=64, horizon_days=30.0),
            # 200k users x 2.5 requests x 10 exposures = 5.0M; a long-tailed catalog (popularity
            # std 1.5) where most items are seen a handful of times
            "catalog": dict(num_users=200_000, num_items=1_000_000, latent_dim=16, requests_per_user=(1, 4),
                            exposures_per_request=10, num_categories=64, popularity_std=1.5, horizon_days=60.0),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


@dataclasses.dataclass(frozen=True)
class SimulatedFeed:
    """A simulated dataset with its ground truth.

    dataset: name "synthetic", oracle_probabilities [E, A] filled (marginal P of each action).
    user_factors: [U, latent_dim] base tastes u; item_factors: [I, latent_dim] v. <u, v> is the
    base affinity (before drift and history), with unit std over random pairs.
    """

    dataset: RankingDataset
    user_factors: np.ndarray
    item_factors: np.ndarray
    config: SimulatorConfig
    item_popularity: np.ndarray | None = None  # [I] popularity logit pop_i
    user_activity: np.ndarray | None = None  # [U] activity act_u
    item_release_time: np.ndarray | None = None  # [I] when an item released over time appears (-inf: always there)
    item_trend_peak: np.ndarray | None = None  # [I] peak time of a trending item (nan: not trending)

    def split_rows(self, split: str = "eval") -> np.ndarray:
        """[E_split] exposure rows of a split's requests ("train", "eval" or "all")."""
        log = self.dataset.interactions
        if split == "all":
            return np.arange(log.num_exposures)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
        requests = getattr(self.dataset, f"{split}_requests")
        starts, ends = log.request_starts[requests], log.request_starts[requests + 1]
        counts = ends - starts
        return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())

    def oracle_auc(self, split: str = "eval") -> dict[str, float]:
        """{action: AUC of the true probabilities} over that split's exposures: the ceiling of any ranker."""
        rows = self.split_rows(split)
        actions = self.dataset.interactions.actions[rows]
        oracle = self.dataset.oracle_probabilities[rows]
        return {name: metrics.auc(actions[:, a], oracle[:, a]) for a, name in enumerate(self.dataset.spec.action_names)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _request_times(config: SimulatorConfig, rng: np.random.Generator, num_requests: np.ndarray,
                   activity: np.ndarray) -> np.ndarray:
    """[R] request times in seconds from the epoch, grouped by user (each user's block ascending)."""
    num_users = config.num_users
    first = np.concatenate([[0], np.cumsum(num_requests)[:-1]])
    times = np.zeros(int(num_requests.sum()))
    # each user starts at a random time of day; whole days are added at the end to spread users over
    # the horizon without moving their day/night rhythm
    clock = rng.random(num_users) * _DAY
    for slot in range(int(num_requests.max())):
        users = np.flatnonzero(num_requests > slot)
        n = len(users)
        if slot:
            # a request opens a new session with probability 1 / requests_per_session
            new_session = rng.random(n) < 1.0 / config.requests_per_session
            within = rng.exponential(config.within_session_gap_s, n)
            # log-normal gaps between sessions; active users come back sooner
            between = np.exp(np.log(config.session_gap_median_h * 3600.0) - 0.4 * activity[users]
                             + config.session_gap_sigma * rng.standard_normal(n))
            clock[users] += np.where(new_session, between, within)
        else:
            new_session = np.ones(n, bool)
        # day/night rhythm: a session that would start at night (01:00-07:00) waits for the morning
        hour = (clock[users] % _DAY) / 3600.0
        night = new_session & (hour >= 1.0) & (hour < 7.0)
        clock[users] += np.where(night, (7.0 - hour) * 3600.0 + rng.exponential(3 * 3600.0, n), 0.0)
        times[first[users] + slot] = clock[users]
    span = times[first + num_requests - 1] - times[first]
    spare_days = np.floor(np.maximum(config.horizon_days * _DAY - span, 0.0) / _DAY)
    shift_days = np.floor(rng.random(num_users) * (spare_days + 1))
    return config.epoch_seconds + times + np.repeat(shift_days * _DAY, num_requests)


class FeedPhenomena:
    """The feed phenomena's state and terms (module docstring); each is a no-op at strength 0.

    Its random draws come from its own generator, so the main one (and so a feed with every
    strength at 0) is untouched."""

    SESSION_GAP_S = 1800.0
    RECENT = 8  # clicks remembered per user for repeat consumption

    def __init__(self, config: SimulatorConfig, request_times: np.ndarray, num_requests: np.ndarray,
                 category: np.ndarray, age_bucket: np.ndarray, num_users: int):
        rng = np.random.default_rng([config.seed, 1])
        self.config, self.category = config, category
        num_items = len(category)
        t_min, t_max = request_times.min(), request_times.max()
        self.released_at = np.full(num_items, -np.inf)
        new = rng.random(num_items) < config.new_item_fraction
        self.released_at[new] = t_min + rng.random(int(new.sum())) * (t_max - t_min)
        self.old_items = np.flatnonzero(~new)
        # a new item's side feature says "new" (bucket 0); its true age grows from its release
        self.catalog_age_bucket = np.where(new, 0, age_bucket)
        trending = rng.random(num_items) < config.trending_fraction
        self.peak = np.where(trending, t_min + rng.random(num_items) * (t_max - t_min), np.nan)
        first = np.concatenate([[0], np.cumsum(num_requests)[:-1]])
        gap = np.diff(request_times, prepend=-np.inf)
        starts_session = gap > self.SESSION_GAP_S
        starts_session[first] = True
        self.starts_session = starts_session
        self.session_counts = np.zeros((num_users, int(category.max()) + 1), np.int32) if config.fatigue else None
        self.recent = np.full((num_users, self.RECENT), -1, np.int64) if config.repeat_strength else None

    def shape_pool(self, pool: np.ndarray, users: np.ndarray, now: np.ndarray) -> np.ndarray:
        """The recommender's pool at time `now`: unreleased items swapped for released ones, and a
        quarter of it the users' recent clicks (repeat consumption)."""
        if self.config.new_item_fraction:
            unreleased = self.released_at[pool] > now[:, None]
            pool = np.where(unreleased, self.old_items[pool % len(self.old_items)], pool)
        if self.recent is not None:
            quarter = min(pool.shape[1] // 4, self.RECENT)
            recent = self.recent[users, :quarter]
            pool = pool.copy()
            pool[:, :quarter] = np.where(recent >= 0, recent, pool[:, :quarter])
        return pool

    def popularity(self, base: np.ndarray, items: np.ndarray, now: np.ndarray) -> np.ndarray:
        """pop_i(t): the base popularity plus the trend bump of trending items."""
        if not self.config.trend_strength:
            return base[items]
        lag = (now[:, None] - self.peak[items]) / _DAY
        bump = np.where(lag >= 0, np.exp(-lag / self.config.trend_decay_days),
                        np.exp(lag / self.config.trend_rise_days))
        return base[items] + self.config.trend_strength * np.nan_to_num(bump, nan=0.0)

    def age(self, age_bucket: np.ndarray, items: np.ndarray, now: np.ndarray) -> np.ndarray:
        """The freshness term's age: days since release for released-over-time items (capped like the buckets)."""
        if not self.config.new_item_fraction:
            return age_bucket[items]
        released = self.released_at[items]
        days = np.minimum((now[:, None] - released) / _DAY, self.config.num_age_buckets - 1)
        return np.where(np.isfinite(released), days, age_bucket[items])

    def context_logit(self, users: np.ndarray, requests: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n, K] repeat bonus for the user's recent clicks, minus session fatigue per category."""
        logit = np.zeros(items.shape)
        if self.recent is not None:
            seen = (items[:, :, None] == self.recent[users][:, None, :]).any(-1)
            logit += self.config.repeat_strength * seen
        if self.session_counts is not None:
            self.session_counts[users[self.starts_session[requests]]] = 0
            counts = np.take_along_axis(self.session_counts[users], self.category[items], axis=1)
            logit -= self.config.fatigue * np.log1p(counts)
        return logit

    def after_request(self, users: np.ndarray, requests: np.ndarray, items: np.ndarray, clicked: np.ndarray) -> None:
        if self.session_counts is not None:
            for k in range(items.shape[1]):
                np.add.at(self.session_counts, (users, self.category[items[:, k]]), 1)
        if self.recent is not None:  # newest clicks first, the oldest fall off
            for k in range(items.shape[1]):
                hit = clicked[:, k]
                rolled = np.concatenate([items[hit, k, None], self.recent[users[hit], :-1]], axis=1)
                self.recent[users[hit]] = rolled


def simulate(config: SimulatorConfig = SimulatorConfig()) -> SimulatedFeed:
    """Simulate a feed; deterministic per `config` (and its seed)."""
    rng = np.random.default_rng(config.seed)
    num_users, num_items, dim = config.num_users, config.num_items, config.latent_dim
    k = config.exposures_per_request
    # entries of std dim^-1/4, so <u, v> has unit variance
    factor_scale = dim ** -0.25
    user_factors = rng.standard_normal((num_users, dim)) * factor_scale
    item_factors = rng.standard_normal((num_items, dim)) * factor_scale
    drift_direction = rng.standard_normal((num_users, dim)) * factor_scale
    activity = rng.standard_normal(num_users)
    popularity = rng.standard_normal(num_items) * config.popularity_std
    age_bucket = rng.integers(0, config.num_age_buckets, num_items)
    # category: the item's strongest direction among random "topic" axes, so it tracks the factors
    topics = rng.standard_normal((dim, config.num_categories))
    category = np.argmax(item_factors @ topics + 0.5 * rng.standard_normal((num_items, config.num_categories)), axis=1)
    content = None
    if config.content_dim:
        signal = item_factors @ rng.standard_normal((dim, config.content_dim))
        signal /= signal.std()
        content = (signal + config.content_noise * rng.standard_normal(signal.shape)).astype(np.float32)

    # more active users send more requests (rank-mapped onto the configured range)
    low, high = config.requests_per_user
    activity_rank = np.argsort(np.argsort(activity + 0.5 * rng.standard_normal(num_users))) / max(1, num_users - 1)
    num_requests = np.round(low + activity_rank * (high - low)).astype(np.int64)
    request_times = _request_times(config, rng, num_requests, activity)
    total_requests = int(num_requests.sum())
    first_request = np.concatenate([[0], np.cumsum(num_requests)[:-1]])
    t_min, t_max = request_times.min(), request_times.max()
    time_fraction = (request_times - t_min) / max(t_max - t_min, 1.0)
    phenomena = FeedPhenomena(config, request_times, num_requests, category, age_bucket, num_users)
    age_bucket = phenomena.catalog_age_bucket

    # exposures, filled request slot by request slot (each depends on the user's earlier clicks)
    exposure_items = np.zeros((total_requests, k), np.int64)
    probabilities = np.zeros((total_requests, k, len(ACTION_NAMES)), np.float64)
    actions = np.zeros((total_requests, k, len(ACTION_NAMES)), np.uint8)
    interest = np.zeros((num_users, dim))
    popular_cdf = np.cumsum(np.exp(popularity))
    popular_cdf /= popular_cdf[-1]
    pool_size = config.pool_factor * k
    position_logit = -config.position_bias * np.log1p(np.arange(k))
    conditional = np.array([config.like_given_click, config.collect_given_click, config.share_given_click])
    for slot in range(int(num_requests.max())):
        users = np.flatnonzero(num_requests > slot)
        requests = first_request[users] + slot
        n = len(users)
        # the recommender's pool: half sampled by popularity, half uniform; duplicates knocked out
        num_popular = pool_size // 2
        pool = np.concatenate([np.searchsorted(popular_cdf, rng.random((n, num_popular))),
                               rng.integers(0, num_items, (n, pool_size - num_popular))], axis=1)
        pool = np.minimum(pool, num_items - 1)
        now = request_times[requests]
        pool = phenomena.shape_pool(pool, users, now)
        pool.sort(axis=1)
        duplicate = np.zeros(pool.shape, bool)
        duplicate[:, 1:] = pool[:, 1:] == pool[:, :-1]
        # it knows the base taste only (stale: no drift, no recent interests) and is noisy
        estimate = np.einsum("nd,npd->np", user_factors[users], item_factors[pool])
        score = (config.recommender_affinity * estimate
                 + config.recommender_popularity * phenomena.popularity(popularity, pool, now)
                 + config.recommender_noise * rng.gumbel(size=pool.shape))
        score[duplicate] = -np.inf
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), axis=1), 1)
        items = np.take_along_axis(pool, top, 1)  # [n, K], position 0 = the recommender's best

        taste = (user_factors[users] + config.drift * time_fraction[requests, None] * drift_direction[users]
                 + config.history_weight * interest[users])
        affinity = np.einsum("nd,nkd->nk", taste, item_factors[items])
        item_popularity = phenomena.popularity(popularity, items, now)
        click_logit = (config.click_bias + config.affinity_weight * affinity
                       + config.popularity_weight * item_popularity + config.activity_weight * activity[users, None]
                       + position_logit - config.freshness_weight * phenomena.age(age_bucket, items, now)
                       + phenomena.context_logit(users, requests, items))
        p_click = _sigmoid(click_logit)
        deeper_logit = (conditional[:, 0] + conditional[:, 1] * affinity[..., None]
                        + conditional[:, 2] * item_popularity[..., None])
        p_given_click = _sigmoid(deeper_logit)  # [n, K, 3]
        clicked = rng.random((n, k)) < p_click
        deeper = clicked[..., None] & (rng.random((n, k, 3)) < p_given_click)
        exposure_items[requests] = items
        probabilities[requests, :, 0] = p_click
        probabilities[requests, :, 1:] = p_click[..., None] * p_given_click
        actions[requests, :, 0] = clicked
        actions[requests, :, 1:] = deeper

        # interest state: decayed mean of clicked items' factors, updated only when something was clicked
        # (with action dynamics: liked items pull harder, skipped ones push away, and a request
        # without clicks moves it too)
        clicks = clicked.sum(1)
        engaged = clicks > 0
        weights = clicked.astype(np.float64)
        if config.action_dynamics:
            weights = weights * (1 + config.action_dynamics * deeper[..., 0]) - config.action_dynamics / 4 * ~clicked
            engaged = np.ones_like(engaged)
        clicked_mean = np.einsum("nk,nkd->nd", weights, item_factors[items]) / np.maximum(clicks, 1)[:, None]
        updated = config.history_decay * interest[users] + (1 - config.history_decay) * clicked_mean
        interest[users] = np.where(engaged[:, None], updated, interest[users])
        phenomena.after_request(users, requests, items, clicked)

    request_users = np.repeat(np.arange(num_users), num_requests)
    # the cutoff is the time before which 1 - eval_fraction of the requests happen; a cut at a fraction
    # of the raw span would hinge on the few longest timelines and leave eval nearly empty
    cutoff = np.quantile(request_times, 1.0 - config.eval_fraction)
    is_eval = request_times >= cutoff
    interactions = Interactions(
        user_ids=np.repeat(request_users, k).astype(np.int32),
        item_ids=exposure_items.reshape(-1).astype(np.int32),
        timestamps=np.repeat(request_times, k),
        actions=actions.reshape(-1, len(ACTION_NAMES)),
        request_starts=np.arange(total_requests + 1, dtype=np.int64) * k,
        # where the recommender placed the exposure (0 = top): the position bias is part of the truth
        extras={"position": np.tile(np.arange(k, dtype=np.int32), total_requests)},
    )
    spec = FeatureSpec(
        num_items=num_items, num_users=num_users, action_names=ACTION_NAMES,
        side_vocab_sizes=(config.num_categories, config.num_age_buckets), content_dim=config.content_dim,
    )
    catalog = ItemCatalog(side_features=np.stack([category, age_bucket], 1).astype(np.int32), content=content)
    dataset = RankingDataset(
        name="synthetic", spec=spec, catalog=catalog, interactions=interactions,
        train_requests=np.flatnonzero(~is_eval).astype(np.int64),
        eval_requests=np.flatnonzero(is_eval).astype(np.int64),
        oracle_probabilities=probabilities.reshape(-1, len(ACTION_NAMES)).astype(np.float32),
        info={"source": "simulator", "cutoff_time": float(cutoff), "side_features": SIDE_FEATURE_NAMES,
              "config": dataclasses.asdict(config)},
    )
    return SimulatedFeed(dataset=dataset, user_factors=user_factors, item_factors=item_factors, config=config,
                         item_popularity=popularity, user_activity=activity,
                         item_release_time=phenomena.released_at, item_trend_peak=phenomena.peak)
