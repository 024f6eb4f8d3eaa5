"""The built-in prompts in the corpus's language (`corpus.language`): the system line, the instruction and answer
label of each query type, and the same three example passages with their queries, written in that language (a
small generator copies the language of its examples more reliably than it follows "answer in German"). Users
replace any of it under `generator.prompt.types` and `generator.prompt.system`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguagePrompts:
    system: str                                   # {domain} is filled with corpus.domain
    passages: tuple[str, str, str]                # bread starter, force majeure, bond duration
    types: dict[str, tuple[str, str, tuple[str, str, str]]]  # kind -> (instruction, label, example queries)


LANGUAGES: dict[str, LanguagePrompts] = {
    "en": LanguagePrompts(
        system="You write the search queries that people interested in {domain} type to find texts. "
               "Reply with the query only.",
        passages=("Sourdough starter. A mixture of flour and water fermented by wild yeast and lactic acid bacteria. "
                  "It is fed every day and used to leaven bread without commercial yeast.",
                  "Force majeure. A contract clause that frees both parties from liability when an extraordinary "
                  "event beyond their control, such as a war or a flood, prevents them from meeting their obligations.",
                  "Bond duration. A measure of how sensitive a bond's price is to changes in interest rates, expressed "
                  "in years; the longer the duration, the larger the price swing."),
        types={
            "keyword": ("Write a keyword search, 2 to 6 words, that someone would type into a search engine to find "
                        "this text.", "Search",
                        ("sourdough starter wild yeast", "force majeure clause flood", "bond duration interest rates")),
            "question": ("Write a question that someone would ask and that this text answers.", "Question",
                         ("How do you make bread rise without store-bought yeast?",
                          "Who is liable when a flood stops a contract?",
                          "Why do long-term bonds lose more value when rates rise?")),
            "claim": ("Write one short statement, in your own words, that this text supports.", "Statement",
                      ("Bread can be leavened with wild yeast.",
                       "A flood can excuse a company from its contract obligations.",
                       "Bond prices fall when interest rates go up.")),
            "plain": ("Write the search that someone without special training would type to find this text, in "
                      "everyday words.", "Search",
                      ("bread starter made from flour and water", "getting out of a contract after a disaster",
                       "why my bond fund dropped when rates went up")),
        }),
    "de": LanguagePrompts(
        system="Du schreibst die Suchanfragen, die Menschen mit Interesse an {domain} eintippen, um Texte zu finden. "
               "Antworte nur mit der Anfrage.",
        passages=("Sauerteigansatz. Eine Mischung aus Mehl und Wasser, die von wilden Hefen und Milchsäurebakterien "
                  "vergoren wird. Er wird täglich gefüttert und lässt Brot ohne gekaufte Hefe aufgehen.",
                  "Höhere Gewalt. Eine Vertragsklausel, die beide Parteien von der Haftung befreit, wenn ein "
                  "außergewöhnliches Ereignis wie ein Krieg oder eine Flut sie an der Erfüllung ihrer Pflichten hindert.",
                  "Duration einer Anleihe. Ein Maß dafür, wie stark der Kurs einer Anleihe auf Zinsänderungen reagiert, "
                  "in Jahren; je länger die Duration, desto größer der Kursausschlag."),
        types={
            "keyword": ("Schreibe eine Stichwortsuche aus 2 bis 6 Wörtern, die jemand in eine Suchmaschine eintippen "
                        "würde, um diesen Text zu finden.", "Suche",
                        ("Sauerteigansatz wilde Hefe", "Klausel höhere Gewalt Flut", "Duration Anleihe Zinsen")),
            "question": ("Schreibe eine Frage, die jemand stellen würde und die dieser Text beantwortet.", "Frage",
                         ("Wie geht Brot ohne gekaufte Hefe auf?", "Wer haftet, wenn eine Flut einen Vertrag verhindert?",
                          "Warum verlieren lange Anleihen mehr Wert, wenn die Zinsen steigen?")),
            "claim": ("Schreibe eine kurze Aussage in eigenen Worten, die dieser Text stützt.", "Aussage",
                      ("Brot kann mit wilder Hefe gelockert werden.",
                       "Eine Flut kann ein Unternehmen von seinen Vertragspflichten befreien.",
                       "Anleihekurse fallen, wenn die Zinsen steigen.")),
            "plain": ("Schreibe die Suche, die jemand ohne Fachwissen in Alltagssprache eintippen würde, um diesen "
                      "Text zu finden.", "Suche",
                      ("Brot backen ohne Hefe aus Mehl und Wasser", "aus einem Vertrag raus nach einer Katastrophe",
                       "warum mein Anleihefonds bei steigenden Zinsen gefallen ist")),
        }),
    "fr": LanguagePrompts(
        system="Tu écris les requêtes que tapent les personnes intéressées par {domain} pour trouver des textes. "
               "Réponds uniquement par la requête.",
        passages=("Levain. Un mélange de farine et d'eau fermenté par des levures sauvages et des bactéries lactiques. "
                  "Il est nourri chaque jour et fait lever le pain sans levure du commerce.",
                  "Force majeure. Une clause de contrat qui libère les deux parties de leur responsabilité lorsqu'un "
                  "événement extraordinaire, comme une guerre ou une inondation, les empêche de remplir leurs obligations.",
                  "Duration d'une obligation. Une mesure de la sensibilité du prix d'une obligation aux variations des "
                  "taux d'intérêt, exprimée en années ; plus la duration est longue, plus le prix varie."),
        types={
            "keyword": ("Écris une recherche par mots-clés, de 2 à 6 mots, que quelqu'un taperait dans un moteur de "
                        "recherche pour trouver ce texte.", "Recherche",
                        ("levain levure sauvage", "clause force majeure inondation", "duration obligation taux")),
            "question": ("Écris une question que quelqu'un poserait et à laquelle ce texte répond.", "Question",
                         ("Comment faire lever le pain sans levure du commerce ?",
                          "Qui est responsable quand une inondation empêche un contrat ?",
                          "Pourquoi les obligations longues perdent-elles plus quand les taux montent ?")),
            "claim": ("Écris une courte affirmation, avec tes propres mots, que ce texte soutient.", "Affirmation",
                      ("Le pain peut lever grâce à des levures sauvages.",
                       "Une inondation peut dispenser une entreprise de ses obligations contractuelles.",
                       "Le prix des obligations baisse quand les taux montent.")),
            "plain": ("Écris la recherche que taperait quelqu'un sans formation particulière, avec des mots de tous "
                      "les jours, pour trouver ce texte.", "Recherche",
                      ("faire du pain avec de la farine et de l'eau", "sortir d'un contrat après une catastrophe",
                       "pourquoi mon fonds obligataire a baissé quand les taux ont monté")),
        }),
    "es": LanguagePrompts(
        system="Escribes las búsquedas que teclean las personas interesadas en {domain} para encontrar textos. "
               "Responde solo con la búsqueda.",
        passages=("Masa madre. Una mezcla de harina y agua fermentada por levaduras silvestres y bacterias lácticas. "
                  "Se alimenta cada día y hace subir el pan sin levadura comercial.",
                  "Fuerza mayor. Una cláusula contractual que libera a ambas partes de responsabilidad cuando un hecho "
                  "extraordinario, como una guerra o una inundación, les impide cumplir sus obligaciones.",
                  "Duración de un bono. Una medida de cuánto cambia el precio de un bono cuando cambian los tipos de "
                  "interés, expresada en años; cuanto mayor la duración, mayor la oscilación del precio."),
        types={
            "keyword": ("Escribe una búsqueda de 2 a 6 palabras clave que alguien teclearía en un buscador para "
                        "encontrar este texto.", "Búsqueda",
                        ("masa madre levadura silvestre", "cláusula fuerza mayor inundación",
                         "duración bono tipos de interés")),
            "question": ("Escribe una pregunta que alguien haría y que este texto responde.", "Pregunta",
                         ("¿Cómo se hace subir el pan sin levadura comprada?",
                          "¿Quién es responsable si una inundación impide cumplir un contrato?",
                          "¿Por qué los bonos largos pierden más valor cuando suben los tipos?")),
            "claim": ("Escribe una afirmación breve, con tus propias palabras, que este texto respalde.", "Afirmación",
                      ("El pan puede fermentar con levaduras silvestres.",
                       "Una inundación puede eximir a una empresa de sus obligaciones contractuales.",
                       "El precio de los bonos baja cuando suben los tipos de interés.")),
            "plain": ("Escribe la búsqueda que teclearía alguien sin formación especial, con palabras de todos los "
                      "días, para encontrar este texto.", "Búsqueda",
                      ("hacer pan solo con harina y agua", "salir de un contrato después de un desastre",
                       "por qué bajó mi fondo de bonos al subir los tipos")),
        }),
    "zh": LanguagePrompts(
        system="你为关心{domain}的人写他们用来查找资料的搜索词。只回复搜索词本身。",
        passages=("酸面团酵头。由面粉和水经野生酵母和乳酸菌发酵而成的混合物。每天喂养，用来在不加商业酵母的情况下让面包发酵。",
                  "不可抗力。一种合同条款：当战争、洪水等当事人无法控制的特殊事件使其无法履行义务时，双方均免除责任。",
                  "债券久期。衡量债券价格对利率变化敏感程度的指标，以年为单位；久期越长，价格波动越大。"),
        types={
            "keyword": ("写一个2到6个词的关键词搜索，是别人为了找到这段文字会在搜索引擎里输入的。", "搜索",
                        ("酸面团 野生酵母", "不可抗力条款 洪水", "债券久期 利率")),
            "question": ("写一个别人会问、而这段文字能回答的问题。", "问题",
                         ("不用买的酵母怎么让面包发起来？", "洪水导致合同无法履行时谁承担责任？",
                          "为什么利率上升时长期债券跌得更多？")),
            "claim": ("用你自己的话写一句这段文字支持的简短陈述。", "陈述",
                      ("面包可以用野生酵母发酵。", "洪水可以免除公司的合同义务。", "利率上升时债券价格下跌。")),
            "plain": ("写一个没有专业背景的人为了找到这段文字会输入的日常用语搜索。", "搜索",
                      ("用面粉和水做的面包引子", "遇到灾害怎么解除合同", "利率一涨我的债券基金为什么跌了")),
        }),
    "ja": LanguagePrompts(
        system="あなたは{domain}に関心のある人が文書を探すときに入力する検索クエリを書きます。クエリだけを答えてください。",
        passages=("サワードウスターター。小麦粉と水を野生酵母と乳酸菌で発酵させた混合物。毎日餌を与え、市販のイーストを使わずにパンを膨らませる。",
                  "不可抗力。戦争や洪水など当事者の支配を超えた異常な出来事により義務を果たせないとき、双方を責任から解放する契約条項。",
                  "債券のデュレーション。金利の変化に対する債券価格の感応度を年数で表した指標で、デュレーションが長いほど価格の振れが大きい。"),
        types={
            "keyword": ("この文書を見つけるために検索エンジンに入力する2〜6語のキーワード検索を書いてください。", "検索",
                        ("サワードウ 野生酵母", "不可抗力条項 洪水", "債券 デュレーション 金利")),
            "question": ("この文書が答えになる、人がしそうな質問を書いてください。", "質問",
                         ("市販のイーストなしでパンを膨らませるには？", "洪水で契約が果たせないとき誰が責任を負う？",
                          "金利が上がると長期債が大きく値下がりするのはなぜ？")),
            "claim": ("この文書が裏付ける短い主張を自分の言葉で一文書いてください。", "主張",
                      ("パンは野生酵母で膨らませることができる。", "洪水は会社の契約上の義務を免除しうる。",
                       "金利が上がると債券価格は下がる。")),
            "plain": ("専門知識のない人がこの文書を探すときに普段の言葉で入力する検索を書いてください。", "検索",
                      ("小麦粉と水で作るパン種", "災害のあと契約をやめたい", "金利が上がって債券ファンドが下がった理由")),
        }),
}
