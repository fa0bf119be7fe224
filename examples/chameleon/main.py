"""FunctionBench chameleon: render an HTML table from a page template."""
from chameleon import PageTemplate

TEMPLATE = PageTemplate(
    """<table xmlns:tal="http://xml.zope.org/namespaces/tal">
<tr tal:repeat="row rows"><td tal:repeat="c row" tal:content="c"/></tr>
</table>"""
)


def handler(event, context):
    size = int(event.get("size", 20))
    rows = [[r * size + c for c in range(size)] for r in range(size)]
    html = TEMPLATE(rows=rows)
    return {"bytes": len(html)}
