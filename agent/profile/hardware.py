"""Hardware section: ONNX Runtime execution providers and thread/memory budgets.

Each execution provider owns its options and is picked by `type`, like
Frigate's detectors, so `{type: cuda, fp16: true}` is an unknown-key error
instead of an option silently passed to the wrong backend.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from agent.config.base import FilePath, StrictModel, rule_broken

_MIB = 1024 * 1024


class ExecutionProviderBase(StrictModel):
    """Common shape of an execution provider entry."""

    kind_noun: ClassVar[str] = "execution provider"
    ort_name: ClassVar[str]

    type: str = Field(description="Which execution provider this entry configures.")

    def ort_options(self) -> dict[str, str]:
        """Provider options as ONNX Runtime takes them (string values)."""
        return {}


class CpuProvider(ExecutionProviderBase):
    """ONNX Runtime's default CPU provider; always present, so the usual last fallback."""

    ort_name: ClassVar[str] = "CPUExecutionProvider"

    type: Literal["cpu"] = Field("cpu", description="The CPU provider.")


class CudaProvider(ExecutionProviderBase):
    """NVIDIA GPUs through CUDA (onnxruntime-gpu)."""

    ort_name: ClassVar[str] = "CUDAExecutionProvider"

    type: Literal["cuda"] = Field("cuda", description="The CUDA provider.")
    device_id: int = Field(0, ge=0, le=15, description="CUDA device index.")
    gpu_mem_limit_mb: int | None = Field(
        None,
        ge=64,
        le=1_048_576,
        description="Cap on CUDA's memory arena in MiB; null lets it grow to the GPU's size.",
    )

    def ort_options(self) -> dict[str, str]:
        """`device_id`, and `gpu_mem_limit` in bytes when set."""
        options = {"device_id": str(self.device_id)}
        if self.gpu_mem_limit_mb is not None:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit_mb * _MIB)
        return options


class TensorRtProvider(ExecutionProviderBase):
    """NVIDIA TensorRT (Jetson, data-centre GPUs): fastest, but builds an engine per model."""

    ort_name: ClassVar[str] = "TensorrtExecutionProvider"

    type: Literal["tensorrt"] = Field("tensorrt", description="The TensorRT provider.")
    device_id: int = Field(0, ge=0, le=15, description="CUDA device index.")
    fp16: bool = Field(False, description="Let TensorRT run layers in fp16 (trt_fp16_enable).")
    int8: bool = Field(
        False,
        description="Let TensorRT run layers in int8 (trt_int8_enable); needs a calibrated"
        " or QDQ-quantized model.",
    )
    engine_cache_dir: FilePath | None = Field(
        None,
        description="Directory to cache built engines in, so a restart does not rebuild them"
        " (minutes on a Jetson); null disables the cache.",
    )
    max_workspace_mb: int | None = Field(
        None,
        ge=16,
        le=1_048_576,
        description="TensorRT builder workspace in MiB; null keeps ONNX Runtime's default.",
    )

    def ort_options(self) -> dict[str, str]:
        """The `trt_*` options ONNX Runtime understands."""
        options = {
            "device_id": str(self.device_id),
            "trt_fp16_enable": str(self.fp16),
            "trt_int8_enable": str(self.int8),
        }
        if self.engine_cache_dir is not None:
            options["trt_engine_cache_enable"] = "True"
            options["trt_engine_cache_path"] = self.engine_cache_dir
        if self.max_workspace_mb is not None:
            options["trt_max_workspace_size"] = str(self.max_workspace_mb * _MIB)
        return options


class OpenVinoProvider(ExecutionProviderBase):
    """Intel CPUs, integrated GPUs and NPUs through OpenVINO (onnxruntime-openvino)."""

    ort_name: ClassVar[str] = "OpenVINOExecutionProvider"

    type: Literal["openvino"] = Field("openvino", description="The OpenVINO provider.")
    device_type: str = Field(
        "CPU",
        pattern=r"^(CPU|NPU|GPU(\.[0-9]+)?|(AUTO|HETERO|MULTI):[A-Z0-9.,]+)$",
        description="OpenVINO device: CPU, GPU, GPU.0, NPU, or a combination such as"
        " AUTO:GPU,CPU or HETERO:GPU,CPU.",
    )
    precision: Literal["FP32", "FP16", "ACCURACY"] | None = Field(
        None, description="Inference precision hint; null lets OpenVINO pick per device."
    )
    num_threads: int | None = Field(
        None, ge=1, le=256, description="OpenVINO CPU threads; null keeps OpenVINO's default."
    )
    cache_dir: FilePath | None = Field(
        None, description="Directory for compiled-model blobs, so restarts skip compilation."
    )

    def ort_options(self) -> dict[str, str]:
        """`device_type` plus the optional settings that are set."""
        options = {"device_type": self.device_type}
        if self.precision is not None:
            options["precision"] = self.precision
        if self.num_threads is not None:
            options["num_of_threads"] = str(self.num_threads)
        if self.cache_dir is not None:
            options["cache_dir"] = self.cache_dir
        return options


ExecutionProvider = Annotated[
    TensorRtProvider | CudaProvider | OpenVinoProvider | CpuProvider,
    Field(discriminator="type"),
]


def _cpu_only() -> list[ExecutionProvider]:
    """The default: ONNX Runtime's CPU provider, present in every build."""
    return [CpuProvider()]


class HardwareConfig(StrictModel):
    """How ONNX Runtime uses this device: providers in preference order, threads, memory."""

    execution_providers: list[ExecutionProvider] = Field(
        default_factory=_cpu_only,
        min_length=1,
        max_length=8,
        description="ONNX Runtime execution providers in preference order: each graph node"
        " runs on the first one that supports it. End with {type: cpu} as the fallback.",
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads one operator may use; null lets ONNX Runtime use one per"
        " physical core. Leave a core for the agent's MQTT and HTTP threads on small boards.",
    )
    inter_op_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Threads for running independent graph branches at once; null keeps"
        " ONNX Runtime's default (sequential execution).",
    )
    memory_limit_mb: int | None = Field(
        None,
        ge=16,
        le=1_048_576,
        description="Memory budget in MiB for loaded models and ONNX Runtime arenas; the"
        " agent refuses a model set that does not fit. null means no limit.",
    )

    @model_validator(mode="after")
    def check_each_provider_once(self) -> HardwareConfig:
        seen: set[str] = set()
        for index, provider in enumerate(self.execution_providers):
            if provider.type in seen:
                raise rule_broken(
                    f"execution provider '{provider.type}' is listed twice: keep one entry"
                    " and put its options there",
                    "execution_providers",
                    index,
                    "type",
                )
            seen.add(provider.type)
        return self

    def ort_providers(self) -> list[tuple[str, dict[str, str]]]:
        """The `providers=` argument for `onnxruntime.InferenceSession`, in order."""
        return [(p.ort_name, p.ort_options()) for p in self.execution_providers]
