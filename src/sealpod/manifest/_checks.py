"""Rules that span fields and sections of a manifest, each reported at its exact path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealpod.manifest._problems import Loc, ManifestProblem
from sealpod.manifest.access import manifest_updaters
from sealpod.manifest.models import (
    ACTIONS_BY_RESOURCE,
    RESERVED_ISSUER,
    SECRET_SIZES,
    Manifest,
    Package,
    Secret,
)
from sealpod.manifest.templates import secrets_referenced

__all__ = ["manifest_warnings", "reference_problems"]

_CERT_TYPES = frozenset({"cert-ecdsa", "cert-rsa", "cert-ed25519"})
# RFC 8410 (Ed25519: signatures only), RFC 5480 3 (EC keys: no key/data encipherment).
_KEY_USAGES_BY_TYPE = {
    "cert-rsa": frozenset(
        {
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_cert_sign",
            "crl_sign",
        }
    ),
    "cert-ecdsa": frozenset(
        {"digital_signature", "content_commitment", "key_agreement", "key_cert_sign", "crl_sign"}
    ),
    "cert-ed25519": frozenset(
        {"digital_signature", "content_commitment", "key_cert_sign", "crl_sign"}
    ),
}


def _package(loc: Loc, package: Package) -> Iterator[ManifestProblem]:
    if package.mrenclave is None and package.mrsigner is None:
        yield ManifestProblem(loc, "give either mrenclave or mrsigner")
    if package.mrenclave is not None:
        if package.mrsigner is not None:
            yield ManifestProblem((*loc, "mrsigner"), "give either mrenclave or mrsigner, not both")
        for field in ("isv_prod_id", "min_isv_svn"):
            if getattr(package, field) is not None:
                yield ManifestProblem((*loc, field), "only used with mrsigner")
        seen: set[str] = set()
        for index, value in enumerate(package.mrenclave):
            if value in seen:
                yield ManifestProblem((*loc, "mrenclave", index), "duplicate measurement")
            seen.add(value)
    if package.mrsigner is not None and package.isv_prod_id is None:
        yield ManifestProblem((*loc, "isv_prod_id"), "required with mrsigner")
    if package.mrsigner is not None and package.min_isv_svn is None:
        yield ManifestProblem((*loc, "min_isv_svn"), "required with mrsigner")
    rejected = set(package.rejected_advisories)
    for index, advisory in enumerate(package.accepted_advisories or ()):
        if advisory in rejected:
            yield ManifestProblem(
                (*loc, "accepted_advisories", index), f'"{advisory}" is also rejected'
            )


def _secret(loc: Loc, name: str, secret: Secret) -> Iterator[ManifestProblem]:
    if name == RESERVED_ISSUER:
        yield ManifestProblem(loc, f'"{RESERVED_ISSUER}" is reserved for the mesh CA')
    allowed = SECRET_SIZES[secret.type]
    if allowed is None:
        if secret.size is not None:
            yield ManifestProblem((*loc, "size"), f"a {secret.type} secret has no size")
    elif secret.size is not None and secret.size not in allowed:
        sizes = ", ".join(str(size) for size in sorted(allowed))
        yield ManifestProblem(
            (*loc, "size"), f"{secret.type} size must be one of {sizes} (bits), not {secret.size}"
        )
    if secret.type == "plain" and not secret.user_defined:
        yield ManifestProblem(
            (*loc, "user_defined"), "a plain secret is set by a user: user_defined must be true"
        )
    if secret.user_defined and secret.scope == "per-instance":
        yield ManifestProblem(
            (*loc, "scope"), "a user-defined secret is one value: scope must be shared"
        )
    is_cert = secret.type in _CERT_TYPES
    if not is_cert:
        for field in ("validity", "certificate"):
            if getattr(secret, field) is not None:
                yield ManifestProblem((*loc, field), "only certificate secrets have this field")
        return
    if secret.user_defined:
        for field in ("validity", "certificate"):
            if getattr(secret, field) is not None:
                yield ManifestProblem(
                    (*loc, field), "a user-defined certificate is uploaded as is: remove this"
                )
        return
    if secret.certificate is not None:
        usable = _KEY_USAGES_BY_TYPE[secret.type]
        for index, usage in enumerate(secret.certificate.key_usage):
            if usage not in usable:
                yield ManifestProblem(
                    (*loc, "certificate", "key_usage", index),
                    f"{usage} is not possible with a {secret.type} key",
                )
        if not secret.certificate.ca and "key_cert_sign" in secret.certificate.key_usage:
            yield ManifestProblem(
                (*loc, "certificate", "key_usage"), "key_cert_sign needs ca: true"
            )


def _issuers(manifest: Manifest) -> Iterator[ManifestProblem]:
    for name, secret in manifest.secrets.items():
        template = secret.certificate
        if template is None or template.issuer == RESERVED_ISSUER:
            continue
        loc: Loc = ("secrets", name, "certificate", "issuer")
        issuer = manifest.secrets.get(template.issuer)
        if issuer is None:
            yield ManifestProblem(loc, f'unknown secret "{template.issuer}"')
            continue
        if issuer.type not in _CERT_TYPES:
            yield ManifestProblem(loc, f'"{template.issuer}" is not a certificate secret')
            continue
        if template.issuer == name:
            yield ManifestProblem(loc, "a certificate cannot issue itself (issuer cycle)")
            continue
        if not issuer.user_defined and (issuer.certificate is None or not issuer.certificate.ca):
            yield ManifestProblem(
                loc, f'"{template.issuer}" is not a CA (set its certificate.ca: true)'
            )
        if issuer.scope == "per-instance" and secret.scope == "shared":
            yield ManifestProblem(
                loc, f'a shared certificate cannot be issued by per-instance "{template.issuer}"'
            )
        cycle = _issuer_cycle(manifest, name)
        if cycle:
            yield ManifestProblem(loc, "issuer cycle: " + " -> ".join(cycle))


def _issuer_cycle(manifest: Manifest, start: str) -> list[str]:
    """The cycle ``start`` belongs to (``[a, b, a]``), or an empty list."""
    chain = [start]
    current = start
    while True:
        secret = manifest.secrets.get(current)
        if secret is None or secret.certificate is None:
            return []
        issuer = secret.certificate.issuer
        if issuer == RESERVED_ISSUER or issuer not in manifest.secrets:
            return []
        if issuer in chain:
            return [*chain, issuer] if issuer == start else []
        chain.append(issuer)
        current = issuer


def _services(manifest: Manifest) -> Iterator[ManifestProblem]:
    for name, service in manifest.services.items():
        loc: Loc = ("services", name)
        if service.package not in manifest.packages:
            yield ManifestProblem((*loc, "package"), f'unknown package "{service.package}"')
        mounts: dict[str, str] = {}
        for volume, mount in service.volumes.items():
            if volume not in manifest.volumes:
                yield ManifestProblem((*loc, "volumes", volume), f'unknown volume "{volume}"')
            if mount == "/":
                yield ManifestProblem((*loc, "volumes", volume), "cannot mount a volume on /")
            if mount in mounts:
                yield ManifestProblem(
                    (*loc, "volumes", volume), f'mount path also used by volume "{mounts[mount]}"'
                )
            mounts.setdefault(mount, volume)
        for path in service.files:
            for mount, volume in mounts.items():
                if path == mount:
                    yield ManifestProblem(
                        (*loc, "files", path), f'path is the mount point of volume "{volume}"'
                    )


def _identity_der(pem: str, is_certificate: bool) -> bytes:
    key = (
        x509.load_pem_x509_certificate(pem.encode()).public_key()
        if is_certificate
        else serialization.load_pem_public_key(pem.encode())
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _users_and_roles(manifest: Manifest) -> Iterator[ManifestProblem]:
    keys: dict[bytes, str] = {}
    for name, user in manifest.users.items():
        loc: Loc = ("users", name)
        if (user.certificate is None) == (user.public_key is None):
            yield ManifestProblem(loc, "give exactly one of certificate or public_key")
        else:
            field = "certificate" if user.certificate is not None else "public_key"
            pem = user.certificate if user.certificate is not None else user.public_key
            if pem is not None:
                der = _identity_der(pem, field == "certificate")
                if der in keys:
                    yield ManifestProblem((*loc, field), f'same key as user "{keys[der]}"')
                keys.setdefault(der, name)
        for index, role_name in enumerate(user.roles):
            if role_name not in manifest.roles:
                yield ManifestProblem((*loc, "roles", index), f'unknown role "{role_name}"')
    sections: dict[str, Mapping[str, object]] = {
        "secrets": manifest.secrets,
        "packages": manifest.packages,
        "volumes": manifest.volumes,
    }
    for name, role in manifest.roles.items():
        loc = ("roles", name)
        allowed = ACTIONS_BY_RESOURCE[role.resource]
        for index, action in enumerate(role.actions):
            if action not in allowed:
                choices = ", ".join(sorted(allowed))
                yield ManifestProblem(
                    (*loc, "actions", index),
                    f'"{action}" is not an action on {role.resource} (use {choices})',
                )
        if role.resource == "manifest":
            if role.names:
                yield ManifestProblem((*loc, "names"), "the manifest role takes no names")
            continue
        if not role.names:
            yield ManifestProblem((*loc, "names"), f"name the {role.resource} this role covers")
        section = sections[role.resource]
        singular = role.resource.removesuffix("s")
        for index, item in enumerate(role.names):
            if item not in section:
                yield ManifestProblem((*loc, "names", index), f'unknown {singular} "{item}"')
            elif role.resource == "secrets" and "write" in role.actions:
                if not manifest.secrets[item].user_defined:
                    yield ManifestProblem(
                        (*loc, "names", index),
                        f'secret "{item}" is generated, not user-defined: it cannot be written',
                    )
            elif role.resource == "volumes" and not manifest.volumes[item].rollback_protected:
                yield ManifestProblem(
                    (*loc, "names", index),
                    f'volume "{item}" is not rollback-protected: nothing to reset',
                )


def _thresholds(manifest: Manifest) -> Iterator[ManifestProblem]:
    if manifest.recovery is not None:
        recovery = manifest.recovery
        if recovery.threshold > len(recovery.keys):
            yield ManifestProblem(
                ("recovery", "threshold"),
                f"threshold {recovery.threshold} exceeds the {len(recovery.keys)} recovery keys",
            )
        seen: dict[bytes, str] = {}
        for name, pem in recovery.keys.items():
            der = _identity_der(pem, False)
            if der in seen:
                yield ManifestProblem(("recovery", "keys", name), f'same key as "{seen[der]}"')
            seen.setdefault(der, name)
    if manifest.governance is not None:
        updaters = len(manifest_updaters(manifest))
        threshold = manifest.governance.update_threshold
        if threshold > updaters:
            yield ManifestProblem(
                ("governance", "update_threshold"),
                f"threshold {threshold} exceeds the {updaters} users holding a role with "
                "update on the manifest",
            )
    policy = manifest.policy
    if policy.collateral_source == "pccs" and policy.pccs_url is None:
        yield ManifestProblem(("policy", "pccs_url"), "required when collateral_source is pccs")
    if policy.collateral_source != "pccs" and policy.pccs_url is not None:
        yield ManifestProblem(("policy", "pccs_url"), "only used when collateral_source is pccs")


def reference_problems(manifest: Manifest) -> list[ManifestProblem]:
    """Every cross-field and cross-section problem of a schema-valid manifest."""
    problems: list[ManifestProblem] = []
    for name, package in manifest.packages.items():
        problems += _package(("packages", name), package)
    for name, secret in manifest.secrets.items():
        problems += _secret(("secrets", name), name, secret)
    problems += _issuers(manifest)
    problems += _services(manifest)
    problems += _users_and_roles(manifest)
    problems += _thresholds(manifest)
    return problems


def manifest_warnings(manifest: Manifest) -> list[ManifestProblem]:
    """Things that are valid but weaken security or look unintended."""
    warnings: list[ManifestProblem] = []
    if manifest.policy.allow_simulation:
        warnings.append(
            ManifestProblem(
                ("policy", "allow_simulation"),
                "simulated evidence is accepted: services get secrets without memory isolation",
            )
        )
    for name, package in manifest.packages.items():
        if package.debug:
            warnings.append(
                ManifestProblem(
                    ("packages", name, "debug"), "debug enclaves are accepted (memory is readable)"
                )
            )
    used = {service.package for service in manifest.services.values()}
    for name in manifest.packages:
        if name not in used:
            warnings.append(ManifestProblem(("packages", name), "no service uses this package"))
    used_secrets: set[str] = set()
    for service in manifest.services:
        used_secrets |= secrets_referenced(manifest, service)
    for secret in manifest.secrets.values():
        if secret.certificate is not None:
            used_secrets.add(secret.certificate.issuer)
    for role in manifest.roles.values():
        if role.resource == "secrets":
            used_secrets.update(role.names)
    for name in manifest.secrets:
        if name not in used_secrets:
            warnings.append(
                ManifestProblem(("secrets", name), "no template, role or certificate uses this")
            )
    if manifest.recovery is None:
        warnings.append(
            ManifestProblem(
                ("recovery",), "no recovery keys: the state is lost if the sealing key changes"
            )
        )
    return warnings
