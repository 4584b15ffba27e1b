//! How long an archive will take (SPEC.md AUD-5): seconds ≈ a·KDFs + b·bytes, fitted to
//! the archives verified so far (the ledger's and this run's), for `--max-duration` and the
//! ETA. A v4 archive costs one scrypt KDF per member (header, qubes.xml, every 100 MiB
//! chunk); v2/v3 cost none.

/// Before any measurement: 1 s per KDF (upstream's scrypt parameters are tuned to about
/// a second) and 200 MB/s.
const PRIOR_KDF_SECONDS: f64 = 1.0;
const PRIOR_BYTE_SECONDS: f64 = 1.0 / 200e6;

/// The chunk size upstream and `qbackup-pack` write.
const CHUNK_BYTES: u64 = 100 << 20;

/// KDFs of an archive never verified: assume v4 (the worst case), two members beyond the
/// chunks.
pub fn assumed_kdfs(size: u64) -> u64 {
    2 + size.div_ceil(CHUNK_BYTES)
}

/// One measured archive.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub kdfs: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// The fitted model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub kdf_seconds: f64,
    pub byte_seconds: f64,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            kdf_seconds: PRIOR_KDF_SECONDS,
            byte_seconds: PRIOR_BYTE_SECONDS,
        }
    }
}

impl Model {
    /// Least squares over `samples` when they determine both terms (positive), else the
    /// prior scaled to match their total time.
    pub fn fit(samples: &[Sample]) -> Model {
        let prior = Model::default();
        if samples.is_empty() {
            return prior;
        }
        let (mut kk, mut kb, mut bb, mut kt, mut bt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for s in samples {
            let (k, b, t) = (s.kdfs as f64, s.bytes as f64, s.seconds);
            kk += k * k;
            kb += k * b;
            bb += b * b;
            kt += k * t;
            bt += b * t;
        }
        let det = kk * bb - kb * kb;
        if det > 1e-9 * kk * bb {
            let a = (kt * bb - bt * kb) / det;
            let b = (bt * kk - kt * kb) / det;
            if a > 0.0 && b > 0.0 {
                return Model {
                    kdf_seconds: a,
                    byte_seconds: b,
                };
            }
        }
        let predicted: f64 = samples.iter().map(|s| prior.seconds(s.kdfs, s.bytes)).sum();
        let actual: f64 = samples.iter().map(|s| s.seconds).sum();
        let scale = if predicted > 0.0 {
            actual / predicted
        } else {
            1.0
        };
        Model {
            kdf_seconds: prior.kdf_seconds * scale,
            byte_seconds: prior.byte_seconds * scale,
        }
    }

    pub fn seconds(&self, kdfs: u64, bytes: u64) -> f64 {
        self.kdf_seconds * kdfs as f64 + self.byte_seconds * bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_kdf_and_byte_costs() {
        // 0.5 s per KDF, 100 MB/s.
        let truth = |k: u64, b: u64| 0.5 * k as f64 + b as f64 / 100e6;
        let samples: Vec<Sample> = [(3, 10_000_000), (12, 1_000_000_000), (5, 300_000_000)]
            .iter()
            .map(|&(kdfs, bytes)| Sample {
                kdfs,
                bytes,
                seconds: truth(kdfs, bytes),
            })
            .collect();
        let m = Model::fit(&samples);
        assert!((m.kdf_seconds - 0.5).abs() < 1e-6, "{m:?}");
        assert!((m.byte_seconds * 100e6 - 1.0).abs() < 1e-6, "{m:?}");
        // One sample: the prior, scaled to it.
        let one = Model::fit(&samples[..1]);
        assert!((one.seconds(3, 10_000_000) - truth(3, 10_000_000)).abs() < 1e-9);
        assert_eq!(Model::fit(&[]), Model::default());
        assert_eq!(assumed_kdfs(0), 2);
        assert_eq!(assumed_kdfs(250 << 20), 5);
    }
}
