//! Which passphrase file opens which archive (SPEC.md AUD-10): one `--passphrase-file`,
//! or a map file. Passphrases never travel on a command line: the verifier child gets the
//! file's path and reads it itself, before its sandbox closes.
//!
//! Map file: one rule per line, `PATTERN PASSPHRASE-FILE` (whitespace between; `#` starts a
//! comment line). A pattern with `*`, `?` or `[` is a glob over the whole location
//! (`*` also matches `/`), else a prefix of it. The first matching rule wins. A relative
//! passphrase file is relative to the map file's directory.

use std::path::{Path, PathBuf};

/// One rule.
#[derive(Debug, Clone)]
pub enum Pattern {
    Prefix(String),
    Glob(glob::Pattern),
}

impl Pattern {
    fn matches(&self, location: &str) -> bool {
        match self {
            Pattern::Prefix(p) => location.starts_with(p.as_str()),
            Pattern::Glob(g) => g.matches(location),
        }
    }
}

/// Passphrase files by location.
#[derive(Debug, Clone)]
pub enum Passphrases {
    One(PathBuf),
    Map(Vec<(Pattern, PathBuf)>),
}

impl Passphrases {
    /// Read and check a map file; every passphrase file it names must be readable.
    pub fn load_map(path: &Path) -> Result<Passphrases, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("passphrase map {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(pat), Some(file), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "passphrase map {} line {}: expected `PATTERN PASSPHRASE-FILE`",
                    path.display(),
                    n + 1
                ));
            };
            let pattern = if pat.contains(['*', '?', '[']) {
                Pattern::Glob(glob::Pattern::new(pat).map_err(|e| {
                    format!("passphrase map {} line {}: {e}", path.display(), n + 1)
                })?)
            } else {
                Pattern::Prefix(pat.to_string())
            };
            let file = base.join(file);
            check_readable(&file)?;
            rules.push((pattern, file));
        }
        if rules.is_empty() {
            return Err(format!("passphrase map {} has no rules", path.display()));
        }
        Ok(Passphrases::Map(rules))
    }

    pub fn one(path: &Path) -> Result<Passphrases, String> {
        check_readable(path)?;
        Ok(Passphrases::One(path.to_path_buf()))
    }

    /// The passphrase file for `location`, if any rule matches.
    pub fn for_location(&self, location: &str) -> Option<&Path> {
        match self {
            Passphrases::One(p) => Some(p),
            Passphrases::Map(rules) => rules
                .iter()
                .find(|(pat, _)| pat.matches(location))
                .map(|(_, f)| f.as_path()),
        }
    }
}

fn check_readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("passphrase file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUD-10.
    #[test]
    fn first_matching_rule_wins_globs_and_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("work.pass"), "a\n").unwrap();
        std::fs::write(dir.path().join("home.pass"), "b\n").unwrap();
        std::fs::write(dir.path().join("rest.pass"), "c\n").unwrap();
        let map = dir.path().join("map");
        std::fs::write(
            &map,
            "# backups by site\ns3://backups/work/ work.pass\n*/home-*.bin home.pass\n\
             s3:// rest.pass\n",
        )
        .unwrap();
        let p = Passphrases::load_map(&map).unwrap();
        let f = |l: &str| p.for_location(l).map(|f| f.file_name().unwrap().to_owned());
        assert_eq!(f("s3://backups/work/home-1.bin").unwrap(), "work.pass");
        assert_eq!(f("/srv/x/home-1.bin").unwrap(), "home.pass");
        assert_eq!(f("s3://other/a").unwrap(), "rest.pass");
        assert_eq!(f("/srv/x/a.bin"), None);
        std::fs::write(&map, "s3:// missing.pass\n").unwrap();
        assert!(Passphrases::load_map(&map)
            .unwrap_err()
            .contains("missing.pass"));
        std::fs::write(&map, "only-a-pattern\n").unwrap();
        assert!(Passphrases::load_map(&map).unwrap_err().contains("line 1"));
    }
}
