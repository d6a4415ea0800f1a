from django import forms
from django.core.exceptions import ValidationError

from portal.models import Role


def apply_errors(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's field-named errors next to the form's fields."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


class SignupForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField()
    password = forms.CharField(widget=forms.PasswordInput, strip=False)


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.CharField(
        max_length=40, required=False, help_text="Optional; made from the name when empty."
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. “ci”.")


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
