"""The deployment manifest: models, loading and validation, JSON Schema, template rendering.

Typical use::

    manifest = load_manifest(Path("manifest.yaml"))   # raises ManifestValidationError
    digest = manifest_digest(manifest)                 # SHA-256 of canonical_json(manifest)
    rendered = render_service(manifest, "web", context)

See ``docs/manifest.md`` for the format.
"""

from sealpod.manifest._problems import ManifestProblem, ManifestValidationError, format_path
from sealpod.manifest.access import manifest_updaters, user_is_allowed
from sealpod.manifest.loader import (
    MAX_MANIFEST_BYTES,
    CheckResult,
    canonical_json,
    check_manifest,
    load_manifest,
    manifest_digest,
    manifest_json_schema,
    parse_manifest_document,
    validate_manifest,
)
from sealpod.manifest.models import (
    CertificateTemplate,
    Governance,
    Manifest,
    Package,
    Policy,
    Recovery,
    Role,
    Secret,
    Service,
    User,
    Volume,
)
from sealpod.manifest.templates import (
    BUILTIN_NAMES,
    Certificate,
    CertificateChain,
    CertificateSecret,
    PrivateKey,
    PublicKey,
    RenderContext,
    RenderedService,
    SecretBytes,
    TemplateValueError,
    dry_run,
    render_service,
    secrets_referenced,
)

__all__ = [
    "BUILTIN_NAMES",
    "MAX_MANIFEST_BYTES",
    "Certificate",
    "CertificateChain",
    "CertificateSecret",
    "CertificateTemplate",
    "CheckResult",
    "Governance",
    "Manifest",
    "ManifestProblem",
    "ManifestValidationError",
    "Package",
    "Policy",
    "PrivateKey",
    "PublicKey",
    "Recovery",
    "RenderContext",
    "RenderedService",
    "Role",
    "Secret",
    "SecretBytes",
    "Service",
    "TemplateValueError",
    "User",
    "Volume",
    "canonical_json",
    "check_manifest",
    "dry_run",
    "format_path",
    "load_manifest",
    "manifest_digest",
    "manifest_json_schema",
    "manifest_updaters",
    "parse_manifest_document",
    "render_service",
    "secrets_referenced",
    "user_is_allowed",
    "validate_manifest",
]
