from django import template

register = template.Library()


@register.filter
def dollars(cents) -> str:
    """Integer cents as a price: 299 → "$2.99"."""
    if cents is None or cents == "":
        return ""
    return f"${int(cents) / 100:,.2f}"
