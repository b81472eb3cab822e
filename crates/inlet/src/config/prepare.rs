//! The side effects of a configuration, as one explicit step after loading:
//! the data directory is created and the development secret read or
//! generated. Loading and validating ([`Settings::load`]) change nothing on
//! disk, so a command that only looks (`inlet status`) leaves no trace.

use std::path::Path;

use secrecy::SecretString;

use super::{ConfigError, Settings};

impl Settings {
    /// Creates the data directory and, when the default app uses the
    /// development secret ([`Settings::generated_secret`]), reads it from
    /// its file or generates and writes it there. Idempotent: the services
    /// and the CLI call it once after [`Settings::load`].
    pub fn prepare(&mut self) -> Result<(), ConfigError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| ConfigError::DataDir {
            path: self.data_dir.clone(),
            source,
        })?;
        if let Some(path) = &self.generated_secret {
            let secret = load_or_create_dev_secret(path)?;
            if let Some(app) = self.apps.first_mut() {
                app.secrets = vec![SecretString::from(secret)];
            }
        }
        Ok(())
    }

    /// Whether every app has a secret to verify signatures with: false for
    /// settings that use the development secret before
    /// [`Settings::prepare`].
    pub fn is_prepared(&self) -> bool {
        self.apps.iter().all(|a| !a.secrets.is_empty())
    }
}

fn load_or_create_dev_secret(path: &Path) -> Result<String, ConfigError> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let secret = format!("dev-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(path, format!("{secret}\n")).map_err(|source| ConfigError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(secret)
}
