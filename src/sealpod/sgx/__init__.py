"""Intel SGX structures sealpod builds and checks: SIGSTRUCT, MRENCLAVE, enclave signing keys.

Names load their submodule on first use: the SIGSTRUCT check (:mod:`sealpod.sgx._check`) and
the measurement need no ``cryptography``; signing keys do.
"""

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.sgx.keys import (
        SGX_RSA_EXPONENT,
        SGX_RSA_KEY_BITS,
        EnclaveSigningKey,
        mr_signer_from_modulus,
        write_signing_key,
    )
    from sealpod.sgx.measurement import (
        EEXTEND_CHUNK_SIZE,
        PAGE_SIZE,
        EnclaveMeasurement,
        SecinfoFlags,
        measure_blob,
    )
    from sealpod.sgx.sigstruct import (
        SGX_FLAGS_DEBUG,
        SGX_FLAGS_MASK_DEFAULT,
        SGX_FLAGS_MODE64BIT,
        SGX_MISCSELECT_MASK_DEFAULT,
        SGX_XFRM_LEGACY,
        SGX_XFRM_MASK_DEFAULT,
        SIGSTRUCT,
        SIGSTRUCT_HEADER,
        SIGSTRUCT_HEADER2,
        SIGSTRUCT_LAYOUT,
        SIGSTRUCT_SIZE,
        Field,
        new_sigstruct,
        sign_sigstruct,
        verify_sigstruct,
    )

__all__ = [
    "EEXTEND_CHUNK_SIZE",
    "PAGE_SIZE",
    "SGX_FLAGS_DEBUG",
    "SGX_FLAGS_MASK_DEFAULT",
    "SGX_FLAGS_MODE64BIT",
    "SGX_MISCSELECT_MASK_DEFAULT",
    "SGX_RSA_EXPONENT",
    "SGX_RSA_KEY_BITS",
    "SGX_XFRM_LEGACY",
    "SGX_XFRM_MASK_DEFAULT",
    "SIGSTRUCT",
    "SIGSTRUCT_HEADER",
    "SIGSTRUCT_HEADER2",
    "SIGSTRUCT_LAYOUT",
    "SIGSTRUCT_SIZE",
    "EnclaveMeasurement",
    "EnclaveSigningKey",
    "Field",
    "SecinfoFlags",
    "measure_blob",
    "mr_signer_from_modulus",
    "new_sigstruct",
    "sign_sigstruct",
    "verify_sigstruct",
    "write_signing_key",
]

_WHERE = {
    "SGX_RSA_EXPONENT": "keys",
    "SGX_RSA_KEY_BITS": "keys",
    "EnclaveSigningKey": "keys",
    "mr_signer_from_modulus": "keys",
    "write_signing_key": "keys",
    "EEXTEND_CHUNK_SIZE": "measurement",
    "PAGE_SIZE": "measurement",
    "EnclaveMeasurement": "measurement",
    "SecinfoFlags": "measurement",
    "measure_blob": "measurement",
    "SGX_FLAGS_DEBUG": "sigstruct",
    "SGX_FLAGS_MASK_DEFAULT": "sigstruct",
    "SGX_FLAGS_MODE64BIT": "sigstruct",
    "SGX_MISCSELECT_MASK_DEFAULT": "sigstruct",
    "SGX_XFRM_LEGACY": "sigstruct",
    "SGX_XFRM_MASK_DEFAULT": "sigstruct",
    "SIGSTRUCT": "sigstruct",
    "SIGSTRUCT_HEADER": "sigstruct",
    "SIGSTRUCT_HEADER2": "sigstruct",
    "SIGSTRUCT_LAYOUT": "sigstruct",
    "SIGSTRUCT_SIZE": "sigstruct",
    "Field": "sigstruct",
    "new_sigstruct": "sigstruct",
    "sign_sigstruct": "sigstruct",
    "verify_sigstruct": "sigstruct",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
