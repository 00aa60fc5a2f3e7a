"""Part 4 (performance benchmarks, spec 4.1-4.6): the runners its cases will use, not written yet.

One line per runner: what it will do. The cases (hybrid_assets/catalog/cases/part4.yaml) say how each
metric is judged and why; a ratio's baseline is always measured in the same run, interleaved.

device.hot_discovery_refresh: time discover_devices on a warm worker; 0/1 per device served from the cache.
device.incremental_discovery: add/remove simulated devices; time until the host inventory shows it, or missed.
device.capability_profiling: time a full capability profile per device (measured bandwidths, dtypes); completeness.
device.connection_reliability: spawn, handshake, one request, shut down, many times; 0/1 success per attempt.
device.reconnection: break the host-worker link (close pipes, kill); time until requests succeed again unaided.
device.data_transfer: stream checked payloads both ways; Mbit/s per 1-s window (stream) or 0/1 errors (count).
device.monitoring_updates: subscribe to device monitoring; interval between updates of each critical metric.
device.monitoring_overhead: one reference workload with monitoring on and off, paired; relative slowdown.
device.critical_alerting: push a simulated device past a critical limit; time until the host gets the alert.
device.health_assessment_cadence: watch health assessments of real and simulated devices; interval per device.
device.failure_prediction: replay health traces of known outcome on simulated devices; 0/1 prediction correct.
device.health_intervention: make a simulated device unhealthy; time from its health flag to automatic draining.
memory.allocation_latency: time allocation calls of the given sizes through the memory manager (pages untouched).
memory.allocation_efficiency: 2.2 thrashing workload; sample utilisation, fragmentation and waste of the pool.
memory.concurrent_allocation: 100 clients allocate at once; count held together, latency added over uncontended.
memory.allocation_scaling: allocate/free throughput at 1..10 threads; efficiency vs n x the one-thread rate.
memory.gc_performance: keep making garbage; time each collection's pause and the share of garbage it frees.
memory.gc_throughput_impact: one allocation-heavy workload with collection on and off, paired; throughput lost.
memory.gc_scaling: mean GC pause per heap size, live-object count or pressure level; worker crashes per level.
model.cold_loading: load synthetic checkpoints of the given sizes with host and page caches dropped; time.
model.cache_hit_latency: request models already in the RAM cache; time until usable on the worker.
model.cache_miss_handling: request models not in the cache; 0/1 when the request fails or needs a manual load.
model.cache_efficiency: replay the 2.3 popularity-based switching trace against the configured cache; 0/1 hits.
model.concurrent_loading: load k = 1..5 models at once; aggregate load throughput vs one alone, failed loads.
model.priority_loading: under 5 background loads, race a high- and a normal-priority load; time ratio.
model.cache_vram_sync: move RAM-cached models to VRAM; time until resident and both sides agree (GPU only).
model.state_consistency: random load/unload/evict/restart sequence; compare host and worker model state.
model.state_conflict: change worker model state behind the host's back; time until both agree unaided.
model.loading_order: load a dependent model set in requested order and in the system's order; time ratio.
model.unloading: unload models of the given sizes; time until gone and device memory back; completeness.
model.dependency_resolution: load a dependent set with automatic resolution and pre-resolved, paired; overhead.
processing.workflow_latency: run single-step or multi-step (1.2 pipeline) workflows; host-side end-to-end time.
processing.batch_workflow_scaling: run batches of 10/50/100 items and single items; N x t(1) / t(N) per N.
processing.coordination_overhead: cross-domain workflow time minus the time each domain reports for its step.
processing.state_updates: change state inside the worker; time until the host's subscribed view shows it.
processing.error_propagation: inject exceptions and crashes into workflow steps; time until the host reports them.
processing.session_lifecycle: create, use and close sessions; creation and cleanup times, resources left over.
processing.session_recovery: crash the worker under a session; time until it serves again, state as committed.
processing.concurrent_sessions: keep 50 sessions working on one model; sessions active, failures, model copies.
processing.session_isolation: same requests isolated and in one shared context, paired; overhead, canary leaks.
inference.text_to_image_latency: text-to-image at the given resolution and steps on a warm worker; latency.
inference.image_to_image_latency: image-to-image at the given resolution and executed steps; latency.
inference.controlnet_inference: paired runs with and without ControlNet; time overhead, CLIP-score degradation.
inference.sustained_throughput: back-to-back inference on one GPU; completed inferences per window, per hour.
inference.multi_gpu_scaling: the same workload on 1..4 GPUs; throughput at n vs n x one GPU (GPU only).
inference.batch_throughput: batch size 4 and 1, paired; images per second at 4 over images per second at 1.
inference.resource_utilization: per inference, NVML GPU utilisation, allocated/held VRAM, CPU share (GPU only).
postprocessing.upscaling_latency: upscale images by the given factor and quality on a warm worker; latency.
postprocessing.upscaling_quality: downscale references, upscale back; PSNR gain over bicubic, per input type.
postprocessing.enhancement_latency: enhance images at the given level (standard, ai) and sizes; latency.
postprocessing.batch_enhancement: enhance batches of 2..20 images and single ones; N x t(1) / t(N) per N.
postprocessing.enhancement_quality: degrade references, enhance; 0/1 when PSNR and SSIM both beat the input.
postprocessing.safety_classification_latency: classify images at the given sizes; latency per image.
postprocessing.policy_check_latency: check classification results against the configured policies; latency.
postprocessing.batch_safety_validation: validate batches concurrently and one by one; batch over summed time.
postprocessing.safety_accuracy: classify a labelled safe/borderline/unsafe set; 0/1 correct, 0/1 false positive.
postprocessing.policy_compliance: items on either side of each configured rule; 0/1 decision as configured.
"""

from __future__ import annotations

PLANNED: dict[str, frozenset[str]] = {
    # 4.1 device operation benchmarks (device.cold_start_discovery exists)
    "device.hot_discovery_refresh": frozenset({
        "refresh_latency_s", "refresh_cache_hit", "refresh_error", "refresh_device_count_match"}),
    "device.incremental_discovery": frozenset({"change_detection_s", "change_missed", "spurious_change_detected"}),
    "device.capability_profiling": frozenset({"profile_time_s", "profile_completeness", "profile_error"}),
    "device.connection_reliability": frozenset({"connection_ok", "connection_time_s"}),
    "device.reconnection": frozenset({"reconnection_s", "reconnection_failed", "break_detection_s"}),
    "device.data_transfer": frozenset({"transfer_throughput_mbps", "transfer_error", "transfer_round_trip_s"}),
    "device.monitoring_updates": frozenset({"critical_update_interval_s", "update_delivery_latency_s"}),
    "device.monitoring_overhead": frozenset({
        "monitoring_overhead_ratio", "workload_monitored_s", "workload_unmonitored_s"}),
    "device.critical_alerting": frozenset({"alert_latency_s", "alert_missed", "spurious_alert_detected"}),
    "device.health_assessment_cadence": frozenset({"health_assessment_interval_s", "health_assessment_s"}),
    "device.failure_prediction": frozenset({
        "failure_prediction_correct", "failure_prediction_false_alarm", "failure_prediction_missed"}),
    "device.health_intervention": frozenset({"intervention_s", "intervention_missed"}),
    # 4.2 memory allocation benchmarks
    "memory.allocation_latency": frozenset({"allocation_latency_s", "free_latency_s", "allocation_failed"}),
    "memory.allocation_efficiency": frozenset({
        "memory_utilization_efficiency_ratio", "fragmentation_ratio", "allocation_waste_ratio", "allocation_failed"}),
    "memory.concurrent_allocation": frozenset({
        "concurrent_allocations_held_count", "contention_added_latency_s", "allocation_latency_s",
        "allocation_failed"}),
    "memory.allocation_scaling": frozenset({"allocation_scaling_efficiency_ratio", "allocation_throughput_per_s"}),
    "memory.gc_performance": frozenset({"gc_pause_s", "gc_recovered_ratio"}),
    "memory.gc_throughput_impact": frozenset({"gc_throughput_reduction_ratio"}),
    "memory.gc_scaling": frozenset({"gc_pause_mean_s", "gc_pause_s", "worker_crash"}),
    # 4.3 model loading benchmarks
    "model.cold_loading": frozenset({"cold_load_time_s", "load_failed"}),
    "model.cache_hit_latency": frozenset({"cache_hit_latency_s"}),
    "model.cache_miss_handling": frozenset({"cache_miss_failed", "cache_miss_load_s"}),
    "model.cache_efficiency": frozenset({"cache_hit", "cache_request_s"}),
    "model.concurrent_loading": frozenset({"concurrent_load_throughput_ratio", "load_failed", "load_time_s"}),
    "model.priority_loading": frozenset({
        "priority_load_time_ratio", "high_priority_load_s", "normal_priority_load_s"}),
    "model.cache_vram_sync": frozenset({"cache_vram_sync_s", "sync_state_match"}),
    "model.state_consistency": frozenset({"state_consistent"}),
    "model.state_conflict": frozenset({"conflict_resolution_s", "conflict_unresolved"}),
    "model.loading_order": frozenset({
        "loading_order_time_ratio", "chosen_order_total_s", "requested_order_total_s"}),
    "model.unloading": frozenset({"unload_time_s", "unload_complete"}),
    "model.dependency_resolution": frozenset({"dependency_resolution_overhead_ratio"}),
    # 4.4 processing execution benchmarks
    "processing.workflow_latency": frozenset({"workflow_latency_s", "workflow_failed"}),
    "processing.batch_workflow_scaling": frozenset({"batch_scaling_efficiency_ratio", "batch_time_s"}),
    "processing.coordination_overhead": frozenset({"coordination_overhead_s", "workflow_latency_s"}),
    "processing.state_updates": frozenset({"state_update_latency_s", "state_update_lost"}),
    "processing.error_propagation": frozenset({"error_propagation_s", "error_lost"}),
    "processing.session_lifecycle": frozenset({
        "session_creation_s", "session_cleanup_s", "session_leaked_resources_count"}),
    "processing.session_recovery": frozenset({"session_recovery_s", "session_state_lost"}),
    "processing.concurrent_sessions": frozenset({
        "active_sessions_count", "session_failed", "shared_model_copies_count", "session_request_latency_s"}),
    "processing.session_isolation": frozenset({"isolation_overhead_ratio", "cross_session_leak"}),
    # 4.5 inference performance benchmarks
    "inference.text_to_image_latency": frozenset({"text_to_image_latency_s", "inference_failed"}),
    "inference.image_to_image_latency": frozenset({"image_to_image_latency_s", "inference_failed"}),
    "inference.controlnet_inference": frozenset({
        "controlnet_overhead_ratio", "controlnet_quality_degradation_ratio", "base_latency_s",
        "controlnet_latency_s"}),
    "inference.sustained_throughput": frozenset({"inferences_per_h", "inference_failed"}),
    "inference.multi_gpu_scaling": frozenset({"gpu_scaling_efficiency_ratio", "inferences_per_h"}),
    "inference.batch_throughput": frozenset({"throughput_batch4_over_batch1_ratio"}),
    "inference.resource_utilization": frozenset({"gpu_utilization_ratio", "vram_efficiency_ratio", "cpu_usage_ratio"}),
    # 4.6 postprocessing speed benchmarks
    "postprocessing.upscaling_latency": frozenset({"upscale_latency_s", "upscale_failed"}),
    "postprocessing.upscaling_quality": frozenset({"upscale_psnr_gain_db", "upscale_psnr_gain_by_input_type_db"}),
    "postprocessing.enhancement_latency": frozenset({"enhancement_latency_s"}),
    "postprocessing.batch_enhancement": frozenset({"batch_enhancement_efficiency_ratio"}),
    "postprocessing.enhancement_quality": frozenset({
        "enhancement_improved", "enhancement_psnr_gain_db", "enhancement_ssim_gain"}),
    "postprocessing.safety_classification_latency": frozenset({"safety_classification_s"}),
    "postprocessing.policy_check_latency": frozenset({"policy_check_s"}),
    "postprocessing.batch_safety_validation": frozenset({"batch_validation_time_ratio"}),
    "postprocessing.safety_accuracy": frozenset({"safety_classification_correct", "safety_false_positive"}),
    "postprocessing.policy_compliance": frozenset({"policy_decision_compliant"}),
}
