//! Cryptographic layers (SPEC.md MAC-*, V3-*, V4-*).
//!
//! - [`hmac_file`]: v2/v3 `.hmac` members and HMACs (MAC-4, MAC-5, MAC-6);
//! - [`guess`]: which algorithm authenticates `backup-header` (MAC-2, MAC-3);
//! - [`openssl_enc`]: `openssl enc` CBC streams (V3-1, V3-2, V3-4, V3-6);
//! - [`scrypt_container`]: Tarsnap scrypt containers (V4-1, V4-4, V4-5).

pub mod guess;
pub mod hmac_file;
pub mod openssl_enc;
pub mod scrypt_container;

pub use guess::{header_algorithm_agrees, header_mac_candidates, MacAlgorithm};
pub use hmac_file::{hmac, parse_hmac_file, verify_mac, Digest, HmacState};
pub use openssl_enc::{evp_bytes_to_key_md5, CbcDecryptReader, CbcDecryptor, Cipher};
pub use scrypt_container::{ContainerHeader, KdfLimit, Keys, Params};
