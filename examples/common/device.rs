//! `--device flex|wgpu|cuda` for the examples; unknown or not-compiled names are an error that
//! lists what is available. Also the integer flags of the benchmarks.

use burn::tensor::Device;

/// Backends compiled into this example binary.
pub fn available() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut names = vec!["flex"];
    #[cfg(feature = "wgpu")]
    names.push("wgpu");
    #[cfg(feature = "cuda")]
    names.push("cuda");
    names
}

fn not_built(name: &str) -> String {
    format!(
        "--device {name}: this binary was built without the `{name}` feature; rebuild with `--features {name}` (available: {:?})",
        available()
    )
}

/// The device named by a `--device` value (the clap-parsed examples).
pub fn device_of(name: &str) -> Result<Device, String> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => Err(format!(
            "--device {other}: not available in this build (available: {:?})",
            available()
        )),
    }
}

/// The device named by `--device NAME` in the process's arguments (default `flex`).
pub fn from_args() -> Result<(String, Device), String> {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .position(|a| a == "--device")
        .map(|i| {
            args.get(i + 1)
                .cloned()
                .ok_or("--device needs a value (flex, wgpu or cuda)".to_string())
        })
        .transpose()?
        .unwrap_or_else(|| "flex".to_string());
    let device = match name.as_str() {
        "flex" => Device::flex(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => return Err(not_built("wgpu")),
        #[cfg(not(feature = "cuda"))]
        "cuda" => return Err(not_built("cuda")),
        other => {
            return Err(format!(
                "--device {other}: unknown device (available: {:?})",
                available()
            ));
        }
    };
    Ok((name, device))
}

/// `--name N` as an integer, or `default` when absent.
///
/// # Panics
/// When the value is not an integer (the message names the flag).
pub fn usize_arg(name: &str, default: usize) -> usize {
    parsed_arg(name, default, "an integer")
}

/// `--name X` as a float, or `default` when absent.
///
/// # Panics
/// When the value is not a number (the message names the flag).
pub fn f64_arg(name: &str, default: f64) -> f64 {
    parsed_arg(name, default, "a number")
}

fn parsed_arg<T: std::str::FromStr>(name: &str, default: T, what: &str) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs {what}, got {v}"))
        })
        .unwrap_or(default)
}
