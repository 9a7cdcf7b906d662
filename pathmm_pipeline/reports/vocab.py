"""Small embedded word lists used by the report cleaner and the de-identifier.

* :data:`MEDICAL_WORDS` -- pathology vocabulary: a word broken by a stray space ("carci noma") is re-joined only
  when the joined form is in :data:`KNOWN_WORDS`.
* :data:`COMMON_WORDS` -- frequent English words; two tokens that are both real words are never joined
  ("a typical" stays two words although "atypical" is known).
* :data:`FIRST_NAMES`, :data:`LAST_NAMES` -- common given names and surnames (a generic list, not tied to any
  data set) that the de-identifier recognises without other context.
* :data:`EPONYMS` -- clinical eponyms that look like names ("Lauren classification", "Gleason 4+3") and must
  never be removed unless an explicit name context (a title, a ``Name:`` field) says otherwise.

Everything is lower case; compare with ``word.lower()``.
"""

from __future__ import annotations


def _words(block: str) -> frozenset[str]:
    return frozenset(w.strip().lower() for w in block.split() if w.strip())


MEDICAL_WORDS = _words("""
abdomen abdominal aberrant ablation abnormal abscess absent acinar acinus acute adenocarcinoma adenocarcinomas
adenoma adenomatous adenopathy adequate adherent adhesion adipose adjacent adjuvant adnexa adrenal aggregate
aggregates amorphous ampulla anal analysis anaplastic anastomosis anatomic aneuploid angiolymphatic angioinvasion
antibody antrum anus aorta apex apical apoptosis apoptotic appendix architecture areolar artery arterial ascites
aspirate aspiration atrophic atrophy atypia atypical autolysis axillary basal basaloid benign bilateral bile
biliary biopsy biopsies bladder blood bronchial bronchus bulky calcification calcifications calcified cancer
capillary capsule carcinoid carcinoma carcinomas carcinomatosis carcinosarcoma cardia cartilage cassette
cassettes cauterized cecum cell cells cellular cellularity cellulitis cervix chemotherapy cholangiocarcinoma
chromatin chronic circumferential cirrhosis classification clear clinical coagulative collagen colon colonic
colorectal columnar comedo component consistent core cortex cribriform cyst cystectomy cystic cystoscopy
cytokeratin cytology cytoplasm cytoplasmic degenerative dense depth dermis desmoplasia desmoplastic diagnosis
diagnostic differentiated differentiation diffuse dimension distal diverticulum ductal duodenum dysplasia
dysplastic edema effusion embolus endometrial endometrium endoscopy eosinophil eosinophilic eosinophils
epigastric epithelial epithelium erosion esophageal esophagus excision exophytic extension extracapsular
extranodal fascia fat fibroadenoma fibroblast fibrosis fibrotic fibrous fixation focal foci focus follicle
follicular formalin fragment fragments frozen fundus gastrectomy gastric gastritis gastroesophageal gland
glands glandular granular granulation granuloma granulomas granulomatous haematoxylin haematuria hemorrhage
hemorrhagic hematoxylin hematuria hepatic hepatocellular heterogeneous histiocytes histologic histological
histology homogeneous hyperchromatic hyperplasia hyperplastic hypertrophy ileum iliac immunohistochemistry
immunohistochemical immunoreactive immunostain immunostains inconspicuous infarct infiltrate infiltrates
infiltrating infiltration inflamed inflammation inflammatory inguinal interface intestinal
intraepithelial intramucosal intraductal invasion invasive involvement ischemic jejunum keratin keratinizing
kidney lamina laparoscopic leiomyoma leiomyosarcoma lesion lesions leukocytes lipoma liver lobe lobectomy
lobular lobule localized lumen lung lymph lymphadenectomy lymphatic lymphocyte lymphocytes lymphocytic
lymphoid lymphoma lymphovascular macroscopic macroscopically malignancy malignant mammary margin margins marked
mass mastectomy medullary melanoma membrane mesentery mesothelioma metaplasia metastases metastasis metastatic
microinvasion microscopic microscopically mitoses mitosis mitotic moderately morphology mucin mucinous mucosa
mucosal multifocal muscle muscularis myometrium necrosis necrotic neoadjuvant neoplasia neoplasm neoplastic
nephrectomy nerve neuroendocrine nodal node nodes nodular nodule nodules nonkeratinizing nuclear nuclei nucleoli
nucleolus nucleus omentum oncocytic organ organs orientation ovary palpable pancreas pancreatic papillary
parenchyma pathologic pathological pathology pedunculated pelvic perforation perigastric perineural
perinephric peripheral peritoneal peritoneum perivesical pigment plasma pleomorphic pleomorphism pleura
pleural polyp polypoid polyps portion positive posterior postoperative precancerous preoperative primary
prostate prostatectomy proximal pulmonary pylorus radiation radical receptor recurrence recurrent rectal
rectum regional regression renal resected resection residual retroperitoneal sarcoma sarcomatoid scattered
sclerosis sclerosing section sections seminal serosa serosal serous sessile sigmoid signet sinus specimen
specimens spindle squamous stain staining stains stroma stromal subepithelial submitted submucosa submucosal
subserosa subserosal superficial surgical synoptic tissue tissues transmural transurethral trabecular tubular
tubule tubules tubulovillous tumor tumors tumour tumours ulcer ulcerated ulceration ureter ureteric ureteral
urethra urinary urothelial urothelium uterus vascular vein venous vesicle vesicles villous viable wedge
""")

COMMON_WORDS = _words("""
a about above across after again against all almost along already also although always am among an and
another any are area around as at away back based be because been before being below between both but by
can cannot case center change changes clear close come could day days did different do does done down during
each early either else end enough even every few find first for found four free from full further given go
good great had has have having he her here high him his how however i if in including into is it its itself
just keep kind large last late least left less level like line little long low made main make many may me
measure measured measures measuring medical more most much must near need new next no none nor not noted
now number of off often old on once one only onto open or other others our out outside over overall own
part parts per point present previous received report right same see seen seven several shall she should
show showed shown shows side similar since six size small so some still such surface take taken ten than that
the their them then there these they thin thick this those three through throughout thus to together too
total toward towards two type under until up upon us use used very via was we well were what when where
whether which while white who whole why will with within without would yes yet you your
also appear appears approximately attached based cm consists cut each entire entirely external faint firm
gray grey greatest identified inked labeled labelled largest lower upper measuring mm normal note received
remaining representative sectioned serially soft submitted tan tip unremarkable whitish yellow
patient patients history information comment comments gross final description examination findings
procedure performed discussed telephone contact file findings ordered physician surgeon pathologist
reviewed signed electronically department laboratory hospital center clinic medicine university
stage grade score staging grading type types typical atypical classification system systems edition
male female man woman year years age old month months week weeks
""")

KNOWN_WORDS = MEDICAL_WORDS | COMMON_WORDS

FIRST_NAMES = _words("""
aaron abigail adam adrian agnes aisha alan albert alberto alejandro alex alexander alexandra alfred alice
alicia alison allan allison alma amanda amber amelia amy ana andre andrea andrew angela angelo anita ann anna
anne annie anthony antonio april arthur ashley audrey austin barbara barry beatrice becky benjamin bernard
beth betty beverly bill billy bobby bonnie brad bradley brandon brenda brian bridget brittany bruce bryan
carl carla carlos carmen carol caroline carolyn carrie catherine cathy charles charlotte chad cheryl chris
christina christine christopher cindy claire clara clarence claude claudia clifford clyde colleen connie
craig crystal cynthia dale dan daniel danielle darlene darren dave david dean deborah debra denise
dennis derek diana diane dolores don donald donna doris dorothy douglas duane dwayne earl eddie edgar edith
edna eduardo edward edwin eileen elaine eleanor elena elizabeth ellen elsie emil emily emma eric erica erik
erin ernest esther ethel eugene evelyn fatima felix fernando florence frances francis francisco frank
franklin fred frederick gail gary geoffrey george georgia gerald geraldine gertrude gilbert gina gladys
glen glenda glenn gloria gordon greg gregory gwendolyn hannah harold harriet harry hazel heather hector
helen henry herbert herman hilda holly howard hugh ian ingrid irene isaac isabel ivan jack jacob
jacqueline james jamie jane janet janice jason javier jeanne jeffrey jennifer jenny jeremy jerome
jerry jesse jessica jesus jill jimmy joan joanne joe joel johanna john johnny jon jonathan jorge jose joseph
josephine joshua joyce juan juanita judith judy julia julian julie justin karen karl kate katherine
kathleen kathryn kathy keith kelly kenneth kevin kim kimberly kristen kurt kyle lana larry laura lawrence
leah lee leo leon leonard leroy leslie lillian linda lisa lloyd lois lorraine louis louise lucy luis lydia
lynn mabel marcus margaret maria marian marie marilyn marion marjorie marlene martha martin marvin mary
matthew maureen maxine megan melanie melissa melvin michael michelle miguel mildred milton miriam mohammed
monica muriel myrtle nadia nancy naomi natalie nathan neil nicholas nicole norma norman olga oliver olivia
oscar pamela patricia patrick paul paula pauline pedro peggy peter philip phyllis rachel rafael ralph ramon
randall randy raymond rebecca regina reginald renee rhonda ricardo richard rita robert roberta roberto robin
roger roland ronald rosa rosalie rosemary ross roy ruby rudolph russell ruth ryan sally salvatore
samantha samuel sandra sara sarah scott sean sergio shannon sharon sheila shelley shirley sidney sofia
sonia sophia stanley stephanie stephen steven stuart susan suzanne sylvia tamara tammy ted teresa terry
thelma theodore theresa thomas timothy tina todd tommy tony tracy travis valerie vanessa vera vernon
veronica vicki victor victoria vincent violet virginia vivian wallace walter wanda wayne wendy wesley
wilbur willard william willie wilma yolanda yvonne zachary
""")

LAST_NAMES = _words("""
adams alexander allen alvarez anderson bailey baker barnes bennett bryant butler campbell carter
castillo chavez collins cooper cox cruz davis diaz edwards evans fisher flores foster garcia
gibson gomez gonzales gonzalez graham griffin gutierrez hamilton harris henderson
hernandez howard hughes jackson jenkins jimenez johnson jones kelly kennedy kim lee
lewis lopez martin martinez mcdonald medina mendoza meyer miller mitchell moore morales morgan
morris murphy myers nelson nguyen ortiz owens parker patel perez peterson phillips powell
 ramirez ramos reyes reynolds richardson rivera roberts robinson rodriguez rogers ruiz russell
sanchez sanders schmidt scott simmons smith stewart sullivan taylor thomas thompson torres turner walker
wallace washington watson williams wilson wright zimmerman
""")

# clinical eponyms and named systems that look like names
EPONYMS = _words("""
lauren gleason breslow clark nottingham bloom richardson elston ellis hodgkin hodgkins crohn crohns barrett
barretts paget pagets ewing wilms kaposi merkel brenner warthin hurthle reed sternberg langerhans auerbach
meissner masson fuhrman ishak borrmann siewert mandard ryan dukes astler coller arbor lugano kikuchi
helicobacter papanicolaou giemsa gram grocott ziehl neelsen congo schiller duval bowen bowens hashimoto graves
sjogren whipple zollinger ellison lynch cowden peutz jeghers gardner turcot lewy alzheimer parkinson
""")
