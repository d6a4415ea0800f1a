from django import forms

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Engine, GpuType, Region


class DeploymentForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text="Lowercase letters, digits and hyphens; clients call the model by this name.",
    )
    engine = forms.ChoiceField(choices=Engine.choices, initial=Engine.LLAMACPP)
    model_ref = forms.CharField(
        label="Model",
        max_length=255,
        initial=DEMO_MODEL_REF,
        help_text=f"{DEMO_MODEL_REF} (tiny, random weights — a demo), a catalog model file, "
        "build:<id> or upload:<id> of your organization, shared:<path> in a shared model "
        "folder, or a Hugging Face repo id for vLLM/SGLang.",
    )
    image = forms.CharField(
        max_length=255,
        required=False,
        help_text="Optional (docker, kubernetes): an image the regions' pools allow, or one "
        "your organization's builds produced. Empty: the engine's own image.",
    )
    engine_args = forms.CharField(
        required=False,
        max_length=4000,
        help_text="Extra engine flags, separated by spaces, e.g. --n_ctx 2048 (see the flags "
        "each engine allows below).",
    )
    gpu_type = forms.ChoiceField(label="GPU type")
    gpus_per_replica = forms.IntegerField(label="GPUs per replica", initial=1)
    min_replicas = forms.IntegerField(initial=1)
    max_replicas = forms.IntegerField(initial=1)
    region_1 = forms.ChoiceField(label="First choice region")
    region_2 = forms.ChoiceField(label="Second choice", required=False)
    region_3 = forms.ChoiceField(label="Third choice", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["gpu_type"].choices = [(g.code, g.name) for g in GpuType.objects.all()]
        regions = [(r.code, f"{r.name} ({r.code})") for r in Region.objects.filter(enabled=True)]
        self.fields["region_1"].choices = regions
        self.fields["region_2"].choices = [("", "—"), *regions]
        self.fields["region_3"].choices = [("", "—"), *regions]

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        regions = [data.pop(f"region_{i}") for i in (1, 2, 3)]
        data["regions"] = [r for r in regions if r]
        data["engine_args"] = (data.get("engine_args") or "").split()
        return data


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=0)
