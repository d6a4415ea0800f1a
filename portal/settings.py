"""Gantry settings: one module, read from the environment, with embedded defaults.

Embedded default (nothing set): SQLite under ``var/``, a Celery broker on the local
filesystem (kombu's filesystem transport), mail written to ``var/mail``, payments off.
Production: set ``DEBUG=False``, ``SECRET_KEY``, ``DATABASE_URL``, ``CELERY_BROKER_URL``
and ``ALLOWED_HOSTS`` (see ``.env.example``).
"""

import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A developer's own overrides; production sets real environment variables instead.
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=True)


def _secret_key() -> str:
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production (DEBUG=False) refuses to start without it; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Embedded mode: a random key kept in var/ so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# API keys and other tokens are stored as HMAC-SHA256 digests under this key. Rotating
# SECRET_KEY alone must not invalidate every API key, so it can be pinned separately.
API_KEY_HMAC_SECRET = env.str("API_KEY_HMAC_SECRET", default=SECRET_KEY)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "axes",
    "portal",
    "deployments",
    "marketplace",
    "builder",
    "billing",
    "gateway",
    "lab",
]

MIDDLEWARE = [
    # Outermost, so every API error (even one raised by another middleware) answers JSON.
    "portal.api_errors.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portal.middleware.CurrentOrganizationMiddleware",
    # Last, as django-axes asks: it answers a locked-out sign-in with 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.tenancy",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    },
]

# --- Database -------------------------------------------------------------------------
SQLITE_PATH = VAR_DIR / "gantry.sqlite3"
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{SQLITE_PATH}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: WAL lets readers run beside a writer, and
    # IMMEDIATE transactions take the write lock up front instead of failing mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # The usage ledger's covering index (billing.UsageRecord) carries non-key columns on
    # PostgreSQL; SQLite builds the same index on its key columns, which is all it needs.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
    # A file, not memory, so a test's Celery worker subprocess sees the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes checks each sign-in first and refuses one that is locked out.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal:dashboard"
LOGOUT_REDIRECT_URL = "portal:dashboard"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = VAR_DIR / "media"

# --- Mail -----------------------------------------------------------------------------
if env.str("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(VAR_DIR / "mail")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Gantry <gantry@localhost>")

# --- Security (production) ------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    if env.bool("BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.permissions.IsOrganizationMember"],
    # JSON bodies only; a form or multipart body answers 415. Uploads set their own parser.
    "DEFAULT_PARSER_CLASSES": ["portal.parsers.JSONObjectParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_RATE_ANON", default="120/minute"),
        "user": env.str("API_RATE_USER", default="1200/minute"),
        # Browser sign-ups per client address (portal.throttles.SignupThrottle).
        "signup": env.str("SIGNUP_RATE", default="10/hour"),
    },
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api_errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gantry API",
    "DESCRIPTION": "Self-hosted model marketplace and deployment portal for LLM inference.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Every operation documents the error bodies it may answer (see portal.api_schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api_schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "UploadKindEnum": "builder.models.Upload.Kind",
        "BuildSourceEnum": "builder.models.Build.Source",
        "RunStatusEnum": "lab.status.RunStatus",
        "BenchmarkTargetEnum": "lab.models.Target",
    },
}

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _processed_dir = VAR_DIR / "celery" / "processed"
    # kombu keeps fanout (control, pidbox) bindings in a folder of their own; without this
    # option it writes them into ./control of whatever directory the process started in.
    _control_dir = VAR_DIR / "celery" / "control"
    for _dir in (_queue_dir, _processed_dir, _control_dir):
        _dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "control_folder": str(_control_dir),
        "store_processed": False,
        # The folder is polled; a short interval keeps deploys snappy in embedded mode.
        "polling_interval": 0.1,
    }
else:
    # Longer than any task may run, so an acks_late task is not redelivered while alive.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="gantry")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = TIME_ZONE

# --- Logging --------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Gantry ---------------------------------------------------------------------------
# Who may create an account: "open" (anyone; the embedded demo), "invite" (only with a
# valid invitation link) or "closed" (operators create accounts: manage.py createorg).
SIGNUP_MODE = env.str("SIGNUP_MODE", default="open")
if SIGNUP_MODE not in {"open", "invite", "closed"}:
    raise ImproperlyConfigured("SIGNUP_MODE must be open, invite or closed.")
# Organizations one user may own, the personal one included.
MAX_OWNED_ORGANIZATIONS = env.int("MAX_OWNED_ORGANIZATIONS", default=5)
# Called inside organization_create's transaction with (organization=, owner=); billing
# refuses owners with a suspended or past-due organization.
ORGANIZATION_CREATED_HOOKS = ["billing.plans.organization_admit"]
# Sign-in lockout (django-axes): this many failures in a row for one username from one
# address lock that pair out for LOGIN_LOCKOUT_MINUTES.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
INVITATION_MAX_AGE_DAYS = env.int("INVITATION_MAX_AGE_DAYS", default=7)
# API keys record last use at most this often, so a busy key is not a write per request.
API_KEY_LAST_USED_RESOLUTION_S = env.int("API_KEY_LAST_USED_RESOLUTION_S", default=60)

# --- Deployments ----------------------------------------------------------------------
# Folders replicas may load model files from (absolute paths, comma-separated); the
# first also holds the demo model.
GANTRY_MODEL_DIRS = env.list("GANTRY_MODEL_DIRS", default=[str(VAR_DIR / "models")])
# Where the local driver keeps each replica's pid, port and log.
RUNTIME_DIR = Path(env.str("RUNTIME_DIR", default=str(VAR_DIR / "replicas")))
# Engine images the docker and kubernetes drivers run (production: the engines' own).
GANTRY_ENGINE_IMAGES = {
    "llama.cpp": env.str("LLAMACPP_IMAGE", default="gantry/llamacpp:0.3.36"),
    "vllm": env.str("VLLM_IMAGE", default="vllm/vllm-openai:v0.11.0"),
    "sglang": env.str("SGLANG_IMAGE", default="lmsysorg/sglang:v0.5.3"),
}
# Folders staff share with every organization: tenants deploy files there as
# shared:<path inside the folder>. Default: the folders builds may read.
GANTRY_SHARED_MODEL_DIRS = env.list(
    "GANTRY_SHARED_MODEL_DIRS", default=env.list("BUILDER_ALLOWED_PATHS", default=[])
)
# Which models and images each organization owns, as the apps above deployments know it
# (named here, the composition root, so that deployments imports none of them).
GANTRY_ARTIFACT_SOURCES = [
    "marketplace.artifacts.organization_artifacts",
    "builder.artifacts.organization_artifacts",
]
DOCKER_HOST = env.str("DOCKER_HOST", default="unix:///var/run/docker.sock")
KUBECONFIG = env.str("KUBECONFIG", default="")
RECONCILE_INTERVAL_S = env.int("RECONCILE_INTERVAL_S", default=10)
REPLICA_STARTUP_TIMEOUT_S = env.int("REPLICA_STARTUP_TIMEOUT_S", default=600)
REPLICA_HEALTH_FAILURES = env.int("REPLICA_HEALTH_FAILURES", default=3)
REPLICA_MAX_FAILURES = env.int("REPLICA_MAX_FAILURES", default=5)
REPLICA_MAX_BACKOFF_S = env.int("REPLICA_MAX_BACKOFF_S", default=60)
# Draining a replica before it stops: it gets no new requests at once; it stops once every
# gateway reports none in flight on it, at the earliest after the grace (longer than the
# gateway's route TTL plus two load reports), at the latest after the timeout.
REPLICA_DRAIN_GRACE_S = env.float("REPLICA_DRAIN_GRACE_S", default=15.0)
REPLICA_DRAIN_TIMEOUT_S = env.float("REPLICA_DRAIN_TIMEOUT_S", default=600.0)
# How often the engines' own Prometheus metrics (vLLM, SGLang) are scraped.
ENGINE_SIGNALS_INTERVAL_S = env.float("ENGINE_SIGNALS_INTERVAL_S", default=10.0)
# Timeline retention per deployment: the newest EVENTS_KEEP_PER_DEPLOYMENT events, none
# older than EVENTS_MAX_AGE_DAYS (0 turns either bound off). Pruned by beat every hour.
EVENTS_KEEP_PER_DEPLOYMENT = env.int("EVENTS_KEEP_PER_DEPLOYMENT", default=1000)
EVENTS_MAX_AGE_DAYS = env.int("EVENTS_MAX_AGE_DAYS", default=90)
# The weights cache: hub weights a deployment loads land in <dir>/<region>/<owner>--<name>/
# <revision>/, one copy per region shared by every organization. Default: inside the first
# model folder. A fetch whose worker stops renewing its lease this long is resumed (up to
# WEIGHTS_FETCH_ATTEMPTS times).
GANTRY_WEIGHTS_DIR = env.str("GANTRY_WEIGHTS_DIR", default="")
WEIGHTS_FETCH_LEASE_S = env.int("WEIGHTS_FETCH_LEASE_S", default=120)
WEIGHTS_FETCH_ATTEMPTS = env.int("WEIGHTS_FETCH_ATTEMPTS", default=5)

# --- Marketplace ----------------------------------------------------------------------
HF_ENDPOINT = env.str("HF_ENDPOINT", default="")  # empty: the public hub
HF_TOKEN = env.str("HF_TOKEN", default="")  # read-only token for gated repos; never shown
CATALOG_SYNC_INTERVAL_S = env.int("CATALOG_SYNC_INTERVAL_S", default=6 * 3600)
# Memory of one CPU slot, for fit estimates of CPU (llama.cpp) profiles.
CPU_SLOT_MEMORY_GB = env.int("CPU_SLOT_MEMORY_GB", default=16)

# --- Builder --------------------------------------------------------------------------
# Registry built images are pushed to (host:port); empty keeps them on the Docker host.
REGISTRY_URL = env.str("REGISTRY_URL", default="")
# Folders on shared storage that builds may read models from (absolute, comma-separated).
BUILDER_ALLOWED_PATHS = env.list("BUILDER_ALLOWED_PATHS", default=[])
# Let builds pull a missing engine base image from its registry (off: use what is loaded).
BUILDER_PULL_BASE_IMAGES = env.bool("BUILDER_PULL_BASE_IMAGES", default=False)
# A build or weights fetch whose worker has not renewed its lease for this long lost its
# worker, and is failed with that reason (the lease is renewed every quarter of it).
BUILDER_LEASE_S = env.int("BUILDER_LEASE_S", default=120)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Billing --------------------------------------------------------------------------
# Stripe is off unless both are set. STRIPE_API_BASE points the official client elsewhere
# (a mock or a proxy); empty means Stripe itself.
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")

# --- Gateway --------------------------------------------------------------------------
GATEWAY_URL = env.str("GATEWAY_URL", default="http://127.0.0.1:8001").rstrip("/")
# Client networks and their regions, for routing: "10.1.0.0/16=eu-west,10.2.0.0/16=us-east".
GATEWAY_REGION_CIDRS = env.str("GATEWAY_REGION_CIDRS", default="")
GATEWAY_ROUTE_TTL_S = env.float("GATEWAY_ROUTE_TTL_S", default=2.0)
# Prefix-affinity routing: how much of a prompt makes its prefix (characters of the
# rendered messages), and how far above the mean load (factor) and above the least loaded
# replica (requests in flight) a prefix's home may be and still take it.
GATEWAY_PREFIX_CHARS = env.int("GATEWAY_PREFIX_CHARS", default=1024)
GATEWAY_PREFIX_LOAD_FACTOR = env.float("GATEWAY_PREFIX_LOAD_FACTOR", default=1.25)
GATEWAY_PREFIX_LOAD_SLACK = env.int("GATEWAY_PREFIX_LOAD_SLACK", default=4)
# How long a prefix keeps its home replica after its last request.
GATEWAY_PREFIX_TTL_S = env.int("GATEWAY_PREFIX_TTL_S", default=600)
# Shared rate-limit counters and prefix homes for several gateway processes; empty: kept
# in the process.
GATEWAY_REDIS_URL = env.str("GATEWAY_REDIS_URL", default="")
# Bearer token Prometheus sends to scrape /metrics; empty: /metrics answers 404.
GATEWAY_METRICS_TOKEN = env.str("GATEWAY_METRICS_TOKEN", default="")
# Proxies (CIDRs) whose X-Gantry-Region and X-Forwarded-For headers are believed.
GATEWAY_TRUSTED_PROXIES = env.str("GATEWAY_TRUSTED_PROXIES", default="")
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=4 * 1024 * 1024)
GATEWAY_MAX_ANSWER_BYTES = env.int("GATEWAY_MAX_ANSWER_BYTES", default=64 * 1024 * 1024)
GATEWAY_MAX_TOKENS = env.int("GATEWAY_MAX_TOKENS", default=1_000_000)
GATEWAY_KEY_CACHE_SIZE = env.int("GATEWAY_KEY_CACHE_SIZE", default=10_000)
GATEWAY_KEY_NEGATIVE_TTL_S = env.float("GATEWAY_KEY_NEGATIVE_TTL_S", default=60.0)
GATEWAY_DB_CONCURRENCY = env.int("GATEWAY_DB_CONCURRENCY", default=4)
# Browser origins that may call the gateway (the playground runs in the portal's pages).
GATEWAY_CORS_ORIGINS = env.list("GATEWAY_CORS_ORIGINS", default=[SITE_URL])

# --- Playground -----------------------------------------------------------------------
# Lifetime of the deployment-scoped `gp_…` tokens the portal mints for the playground.
PLAYGROUND_TOKEN_TTL_S = env.int("PLAYGROUND_TOKEN_TTL_S", default=600)
# Requests per minute the gateway lets one member send through playground tokens.
PLAYGROUND_REQUESTS_PER_MINUTE = env.int("PLAYGROUND_REQUESTS_PER_MINUTE", default=30)
# How often each gateway process reports its load (in flight, traffic) to the database.
GATEWAY_LOAD_REPORT_S = env.float("GATEWAY_LOAD_REPORT_S", default=5.0)
