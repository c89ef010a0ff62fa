//! Choosing where to train: CUDA when there is one, the CPU otherwise, or what the user forces.

use crate::MlError;
use tch::Cuda;
/// Where a model lives (libtorch's), for callers that do not depend on tch.
pub use tch::Device;

/// `auto`, `cpu`, `cuda` or `cuda:<n>`.
pub fn select(preference: &str) -> Result<Device, MlError> {
    let cuda_count = || Cuda::device_count() as usize;
    match preference.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        other => {
            let index = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| unknown(preference))?,
                None => return Err(unknown(preference)),
            };
            if index >= cuda_count() {
                return Err(MlError::Config(format!(
                    "device {preference}: {} CUDA device(s) visible",
                    cuda_count()
                )));
            }
            Ok(Device::Cuda(index))
        }
    }
}

fn unknown(preference: &str) -> MlError {
    MlError::Config(format!(
        "unknown device {preference:?}: use auto, cpu, cuda or cuda:<n>"
    ))
}

/// The planning catalogue's name for a device, for its peak FLOP/s in MFU.
pub fn peak_name(device: Device) -> &'static str {
    match device {
        Device::Cuda(_) => "h100",
        _ => "cpu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_preferences_and_refuses_missing_devices() {
        assert_eq!(select("cpu").unwrap(), Device::Cpu);
        assert_eq!(select("auto").unwrap(), Device::cuda_if_available());
        assert!(
            select("tpu")
                .unwrap_err()
                .to_string()
                .contains("unknown device")
        );
        assert!(select("cuda:x").is_err());
        if !Cuda::is_available() {
            assert!(select("cuda").unwrap_err().to_string().contains("0 CUDA"));
        }
    }
}
