"""Three generated pages with more DOM than the test site, for capturing realistic recordings.

Text is drawn from a made-up vocabulary with a fixed seed: the pages are the same on every
run, and compress about as well as real prose (a repeated sentence would compress far better).
"""

from __future__ import annotations

import random
from html import escape

_SYLLABLES = ["ka", "lo", "mi", "sen", "tor", "va", "pri", "del", "un", "mar", "ost", "ri", "fen"]
_SYLLABLES += ["la", "qui", "dor", "bel", "tas", "ne", "cor", "wi", "lum", "pa", "gro", "es"]


def _vocabulary(rng: random.Random, size: int = 600) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(size)]


def _sentence(rng: random.Random, words: list[str], length: tuple[int, int] = (6, 18)) -> str:
    text = " ".join(rng.choice(words) for _ in range(rng.randint(*length)))
    return text.capitalize() + "."


def _page(title: str, tracker_tag: str, style: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"{tracker_tag}<style>{style}</style></head><body>{body}</body></html>"
    )


def article(tracker_tag: str) -> str:
    """A long blog post: headings, paragraphs, figures, a table of contents and a comment form."""
    rng = random.Random(7)
    words = _vocabulary(rng)
    sections = []
    toc = []
    for number in range(1, 37):
        heading = _sentence(rng, words, (3, 6)).rstrip(".")
        toc.append(f'<li><a href="#s{number}">{escape(heading)}</a></li>')
        paragraphs = "".join(
            f"<p>{' '.join(_sentence(rng, words) for _ in range(rng.randint(3, 6)))}</p>"
            for _ in range(rng.randint(2, 4))
        )
        figure = (
            f'<figure><svg width="320" height="80" role="img"><rect width="{rng.randint(60, 320)}" height="80" '
            f'fill="#{rng.randrange(0x1000000):06x}"/></svg><figcaption>{escape(_sentence(rng, words, (4, 8)))}'
            "</figcaption></figure>"
        )
        sections.append(f'<section id="s{number}"><h2>{escape(heading)}</h2>{paragraphs}{figure}</section>')
    body = (
        '<header><nav><a href="/">Home</a> <a href="/blog">Blog</a></nav></header>'
        f'<main><article><h1>{escape(_sentence(rng, words, (4, 7)))}</h1><ol class="toc">{"".join(toc)}</ol>'
        f"{''.join(sections)}</article>"
        '<form class="comment"><label>Name <input id="name" type="text"></label>'
        '<label>Comment <textarea id="comment" rows="4"></textarea></label>'
        '<button id="post" type="button">Post comment</button></form></main>'
    )
    style = (
        "body{font:16px/1.6 Georgia,serif;max-width:44rem;margin:0 auto;padding:1rem;color:#222}"
        "h1{font-size:2.2rem}h2{margin-top:2rem}figure{margin:1rem 0}figcaption{color:#666;font-size:.9rem}"
        ".toc{columns:2}.comment label{display:block;margin:.5rem 0}"
    )
    return _page("Field notes", tracker_tag, style, body)


def catalogue(tracker_tag: str) -> str:
    """A shop listing: filters with checkboxes, a grid of product cards with buttons."""
    rng = random.Random(11)
    words = _vocabulary(rng)
    filters = "".join(
        f'<li><label><input type="checkbox" name="f{number}"> {escape(rng.choice(words).title())}</label></li>'
        for number in range(24)
    )
    cards = "".join(
        f'<li class="card" data-sku="SKU-{number:05d}"><div class="thumb" style="background:#'
        f'{rng.randrange(0x1000000):06x}"></div><h3>{escape(" ".join(rng.choice(words) for _ in range(3)).title())}'
        f'</h3><p>{escape(_sentence(rng, words, (8, 14)))}</p><span class="price">${rng.randint(5, 400)}.'
        f'{rng.randint(0, 99):02d}</span><button class="add" type="button">Add to basket</button></li>'
        for number in range(260)
    )
    body = (
        '<header><input id="search" type="search" placeholder="Search products"> <span id="basket">Basket: 0</span>'
        f'</header><div class="layout"><aside><h2>Filter</h2><ul>{filters}</ul></aside>'
        f'<main><h1>All products</h1><ul class="grid">{cards}</ul></main></div>'
        "<script>let items=0;document.querySelectorAll('.add').forEach(b=>b.addEventListener('click',()=>{"
        "items+=1;document.getElementById('basket').textContent='Basket: '+items;}));</script>"
    )
    style = (
        "body{font:14px system-ui,sans-serif;margin:0}header{padding:1rem;background:#f4f4f4}"
        ".layout{display:flex}aside{width:14rem;padding:1rem}aside ul{list-style:none;padding:0}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr));gap:1rem;list-style:none;"
        "padding:1rem}.card{border:1px solid #ddd;border-radius:6px;padding:.75rem}"
        ".thumb{height:6rem;border-radius:4px}"
        ".price{font-weight:bold;display:block;margin:.5rem 0}"
    )
    return _page("Shop: all products", tracker_tag, style, body)


def dashboard(tracker_tag: str) -> str:
    """An admin screen: a wide data table, tabs, and a settings form with several inputs."""
    rng = random.Random(13)
    words = _vocabulary(rng)
    statuses = ["paid", "pending", "refunded", "failed"]
    rows = "".join(
        f"<tr><td>#{100000 + number}</td><td>{escape(rng.choice(words).title())} {escape(rng.choice(words).title())}"
        f"</td><td>{escape(rng.choice(words))}@{escape(rng.choice(words))}.test</td>"
        f"<td>2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}</td>"
        f'<td class="{(status := rng.choice(statuses))}">{status}</td>'
        f"<td>{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}</td></tr>"
        for number in range(380)
    )
    body = (
        '<nav class="tabs"><button id="tab-orders" type="button">Orders</button>'
        '<button id="tab-settings" type="button">Settings</button></nav>'
        '<section id="orders"><h1>Orders</h1><table><thead><tr><th>Order</th><th>Customer</th><th>E-mail</th>'
        f"<th>Date</th><th>Status</th><th>Total</th></tr></thead><tbody>{rows}</tbody></table></section>"
        '<section id="settings" hidden><h1>Settings</h1><form>'
        '<label>Shop name <input id="shop-name" type="text"></label>'
        '<label>Support e-mail <input id="support" type="email"></label>'
        '<label>API token <input id="token" type="password"></label>'
        '<button type="button">Save</button></form></section>'
        "<script>for(const[tab,id]of[['tab-orders','orders'],['tab-settings','settings']])"
        "document.getElementById(tab).addEventListener('click',()=>{"
        "for(const s of document.querySelectorAll('section'))s.hidden=s.id!==id;});</script>"
    )
    style = (
        "body{font:13px system-ui,sans-serif;margin:0 1rem}table{border-collapse:collapse;width:100%}"
        "td,th{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left}.paid{color:green}"
        ".failed{color:#b00}.tabs button{margin:.5rem .25rem}form label{display:block;margin:.5rem 0}"
    )
    return _page("Admin: orders", tracker_tag, style, body)
